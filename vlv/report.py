"""A self-contained HTML report: metric table, image grids (inline PNG) and loss curves (inline SVG)."""

from __future__ import annotations

import base64
import html
import io
import json
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


def _curve(title: str, log: list[dict], key: str = "loss", width: int = 360, height: int = 160) -> str:
    pts = [(e["step"], e[key]) for e in log if key in e]
    if len(pts) < 2:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = lambda x: 40 + (x - x0) / max(1e-9, x1 - x0) * (width - 50)  # noqa: E731
    sy = lambda y: 10 + (1 - (y - y0) / max(1e-9, y1 - y0)) * (height - 30)  # noqa: E731
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    return (
        f'<figure><figcaption>{html.escape(title)}: {key}</figcaption><svg width="{width}" height="{height}">'
        f'<polyline fill="none" stroke="#36c" stroke-width="2" points="{line}"/>'
        f'<text x="0" y="14" font-size="11">{y1:.4g}</text><text x="0" y="{height - 20}" font-size="11">{y0:.4g}</text>'
        f'<text x="40" y="{height - 4}" font-size="11">step {x0}</text>'
        f'<text x="{width - 70}" y="{height - 4}" font-size="11">step {x1}</text></svg></figure>'
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
    plots += _curve("stage 1 held-out", curves.get("stage 1 (train loss)", []), key="recovered")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vlv shapes demo</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} td{{padding:4px 10px}} figure{{display:inline-block;
margin:6px;max-width:200px;font-size:12px;vertical-align:top}} img{{image-rendering:pixelated}}</style></head><body>
<h1>vlv shapes demo</h1>
<h2>Metrics</h2><table>{table}</table>
<h2>Original | reconstruction | caption (held-out scenes)</h2><table>{rows}</table>
<h2>Teacher samples for held-out captions</h2>{teacher}
<h2>Compositions (equal split of two images' z)</h2>{comps}
<h2>Training curves</h2>{plots}
<h2>All numbers</h2><pre>{html.escape(json.dumps(metrics, indent=2))}</pre>
</body></html>"""
    path.write_text(page)
