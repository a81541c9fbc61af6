"""A self-contained HTML report: metric table, image grids (inline PNG) and loss curves (inline SVG)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import torch
from PIL import Image

from vlv.images import to_pil

SCALE = 6  # 16-px scenes are shown 6× larger, without smoothing


def _png(image: torch.Tensor) -> str:
    im = to_pil(image[None])[0]
    im = im.resize((im.width * SCALE, im.height * SCALE), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


COLORS = ("#36c", "#c63", "#393", "#939")


def _plot(
    title: str, series: dict[str, list[tuple[float, float]]], *, xlabel: str, logx: bool = False, width: int = 360
) -> str:
    """An inline SVG line plot of one or more (x, y) series, with their names as a legend."""
    series = {k: v for k, v in series.items() if len(v) >= 2}
    if not series:
        return ""
    height = 160
    fx = (lambda x: math.log10(x)) if logx else (lambda x: x)
    xs = [fx(x) for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = lambda x: 40 + (fx(x) - x0) / max(1e-9, x1 - x0) * (width - 50)  # noqa: E731
    sy = lambda y: 10 + (1 - (y - y0) / max(1e-9, y1 - y0)) * (height - 30)  # noqa: E731
    lines, legend = [], []
    for k, (name, pts) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        lines.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{line}"/>')
        legend.append(f'<span style="color:{color}">■ {html.escape(name)}</span>')
    lo, hi = (10**x0, 10**x1) if logx else (x0, x1)
    return (
        f"<figure><figcaption>{html.escape(title)} {' '.join(legend) if len(series) > 1 else ''}</figcaption>"
        f'<svg width="{width}" height="{height}">{"".join(lines)}'
        f'<text x="0" y="14" font-size="11">{y1:.4g}</text><text x="0" y="{height - 20}" font-size="11">{y0:.4g}</text>'
        f'<text x="40" y="{height - 4}" font-size="11">{html.escape(xlabel)} {lo:.4g}</text>'
        f'<text x="{width - 90}" y="{height - 4}" font-size="11">{hi:.4g}</text></svg></figure>'
    )


def _curve(title: str, log: list[dict], key: str = "loss") -> str:
    return _plot(f"{title}: {key}", {key: [(e["step"], e[key]) for e in log if key in e]}, xlabel="step")


def _ablation_section(ablations: dict | None) -> str:
    if not ablations:
        return ""

    def table(rows: list[dict]) -> str:
        head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
        body = "".join(
            "<tr>"
            + "".join(f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{v}</td>" for v in r.values())
            + "</tr>"
            for r in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    s1, phases, pairs = ablations["stage1_amount"], ablations["phases"], ablations["n_pairs"]
    plots = _plot(
        "caption exact vs stage-1 renders",
        {"VLV": [(r["renders"], r["caption_exact"]) for r in s1]},
        xlabel="renders",
        logx=True,
    )
    plots += _plot(
        "caption exact vs N pairs",
        {
            "VLV": [(r["n_pairs"], r["vlv_caption_exact"]) for r in pairs],
            "paired-only baseline": [(r["n_pairs"], r["baseline_caption_exact"]) for r in pairs],
        },
        xlabel="N",
        logx=True,
    )
    return (
        "<h2>Ablations</h2><h3>Amount of stage 1 (then stage 2 at the default N)</h3>"
        f"{table(s1)}<h3>After each progressive phase</h3>{table(phases)}<h3>Number of pairs N</h3>{table(pairs)}"
        f"{plots}"
    )


def write_report(
    path: Path,
    *,
    metrics: dict,
    scenes,
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    captions: list[str],
    teacher_samples: torch.Tensor,
    teacher_scenes,
    compositions: list,
    curves: dict[str, list[dict]],
    ablations: dict | None = None,
) -> None:
    rows = "".join(
        f"<tr><td>{_png(o)}</td><td>{_png(r)}</td><td>{html.escape(c)}<br><small>truth: "
        f"{html.escape(s.caption)}</small></td></tr>"
        for s, o, r, c in zip(scenes, originals, reconstructions, captions)
    )
    teacher = "".join(
        f"<figure>{_png(x)}<figcaption>{html.escape(s.caption)}</figcaption></figure>"
        for s, x in zip(teacher_scenes, teacher_samples)
    )
    comps = "".join(
        f"<figure>{_png(img)}<figcaption>{html.escape(a.caption)} + {html.escape(b.caption)}: "
        f"{'both present' if ok else 'not both'}</figcaption></figure>"
        for a, b, img, ok in compositions
    )
    table = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" for k, v in metrics.items() if isinstance(v, (int, float))
    )
    plots = "".join(_curve(name, log) for name, log in curves.items())
    stage1_log = curves.get("stage 1 (train loss)", [])
    plots += _plot(
        "stage 1 held-out denoising loss (fixed noise)",
        {
            name: [(e["step"], e[key]) for e in stage1_log if key in e]
            for name, key in (("with z", "loss_z"), ("true caption", "loss_caption"), ("empty prompt", "loss_empty"))
        },
        xlabel="step",
    )
    plots += _plot(
        "stage 1 held-out: share of the caption's denoising gain",
        {
            "z of the image": [(e["step"], e["recovered"]) for e in stage1_log if "recovered" in e],
            "spliced z of two images": [
                (e["step"], e["composition_recovered"]) for e in stage1_log if "composition_recovered" in e
            ],
        },
        xlabel="step",
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vlv shapes demo</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} td{{padding:4px 10px}} figure{{display:inline-block;
margin:6px;max-width:200px;font-size:12px;vertical-align:top}} img{{image-rendering:pixelated}}</style></head><body>
<h1>vlv shapes demo</h1>
<h2>Metrics</h2><table>{table}</table>
<h2>Original | reconstruction | caption (held-out scenes)</h2><table>{rows}</table>
<h2>Teacher samples for held-out captions</h2>{teacher}
<h2>Compositions (equal split of two images' z)</h2>{comps}
<h2>Training curves</h2>{plots}
{_ablation_section(ablations)}
<h2>All numbers</h2><pre>{html.escape(json.dumps(metrics, indent=2))}</pre>
</body></html>"""
    path.write_text(page)
