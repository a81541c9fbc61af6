"""bf16 where it pays: the check behind the warnings, and where they are given."""

import pytest
import torch

import vlv
from vlv.cli import main
from vlv.precision import bf16_is_native, slow_bf16_message

from .test_run import train_args, write_images


def test_a_cpu_is_native_exactly_where_onednn_has_bf16_kernels():
    """The pinned torch still offers oneDNN's own check: were it gone, every CPU would count as native and the
    warnings below would fall silent (on an AVX2-only CPU bf16 captioning ran 5.7x slower than float32)."""
    assert bf16_is_native("cpu") == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert (slow_bf16_message("cpu") is None) == bf16_is_native("cpu")
    assert bf16_is_native("cuda") == (not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] >= 8)


def test_loading_in_bf16_warns_exactly_where_bf16_is_not_native(recwarn):
    vlv.load("tiny", dtype=torch.float32)
    assert not [w for w in recwarn if "bf16" in str(w.message)]  # float32 never warns
    model = vlv.load("tiny", dtype=torch.bfloat16)
    slow = [w for w in recwarn if "no native kernels" in str(w.message)]
    assert len(slow) == (0 if bf16_is_native("cpu") else 1)
    assert model.encoder.queries.dtype == torch.bfloat16  # a warning, not a refusal: the model is as asked


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_bf16_mixed_precision_training_warns_exactly_where_bf16_is_not_native(tmp_path, caplog):
    write_images(tmp_path / "images", 4)
    with caplog.at_level("WARNING"):
        assert main(train_args(tmp_path / "out", tmp_path / "images", "--mixed-precision", "bf16", steps=1)) == 0
    assert ("--mixed-precision bf16: bf16 on this CPU has no native kernels" in caplog.text) != bf16_is_native("cpu")
