"""A picture of a registered model's lineage: the stage graph from the URL list to the model, as a standalone SVG.

The graph is read from MLflow, walking back from the register stage's inputs: every stage run carries
``franca.stage``, ``franca.output_digest`` and ``franca.upstream.<role>`` (the run ids of its inputs, written by
``tasks.common.tracking``), so the walk needs no knowledge of the flow. Each node shows the stage's name, its
output digest (short) and the MLflow run that computed it; edges go from an input to the stage that read it, named
by their role when it differs from the upstream stage's name. The SVG is written by hand (no system binary, no
fonts to embed): stages in rows by their depth from the URL list, top to bottom, so the MLflow UI's artifact pane
shows it as an image that fits its width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.common.store import StageResult
from tasks.common.tracking import TAG

ARTIFACT = "lineage.svg"
CAPTIONS = {"source": "URL list", "dedup": "training images", "register": "model"}  # what those outputs are
BOX_W, BOX_H, COL_GAP, ROW_GAP, MARGIN, TITLE_H, LANE_W = 250, 66, 40, 34, 20, 40, 34


@dataclass
class Node:
    """One stage output: its stage, output digest and the MLflow run that computed it."""

    stage: str
    digest: str
    run_id: str
    upstream: dict[str, str] = field(default_factory=dict)  # role -> node id


def _node_id(stage: str, run_id: str) -> str:
    return run_id or f"stage:{stage}"


def stage_graph(c: MlflowClient, root: Node, inputs: Mapping[str, StageResult]) -> dict[str, Node]:
    """``{node id: Node}`` of ``root`` and everything upstream of ``inputs``, read from the runs' tags."""
    nodes = {_node_id(root.stage, root.run_id): root}
    todo: list[tuple[str, str, str]] = []  # (run id, stage, digest) known from a StageResult
    for role, result in inputs.items():
        root.upstream[role] = _node_id(result.stage, result.run_id)
        todo.append((result.run_id, result.stage, result.digest))
    while todo:
        run_id, stage, digest = todo.pop()
        key = _node_id(stage, run_id)
        if key in nodes:
            continue
        node = nodes[key] = Node(stage, digest, run_id)
        if not run_id:
            continue  # an untracked output: nothing further to read
        try:
            tags = c.get_run(run_id).data.tags
        except MlflowException:
            continue  # a run of another tracking store: the node stays, its inputs are unknown
        node.stage = tags.get(f"{TAG}stage", stage) or stage
        node.digest = digest or tags.get(f"{TAG}output_digest", "")
        for tag, up_run in tags.items():
            if tag.startswith(f"{TAG}upstream.") and up_run:
                role = tag.removeprefix(f"{TAG}upstream.")
                up_stage = _stage_of(c, up_run)
                node.upstream[role] = _node_id(up_stage, up_run)
                todo.append((up_run, up_stage, ""))
    return nodes


def _stage_of(c: MlflowClient, run_id: str) -> str:
    try:
        return c.get_run(run_id).data.tags.get(f"{TAG}stage", "?")
    except MlflowException:
        return "?"


def _layers(nodes: Mapping[str, Node]) -> dict[str, int]:
    """Longest path from a node without inputs (the URL list's stage is column 0)."""
    depth: dict[str, int] = {}

    def visit(key: str, seen: frozenset[str]) -> int:
        if key in depth:
            return depth[key]
        ups = [u for u in nodes[key].upstream.values() if u in nodes and u not in seen]
        depth[key] = 1 + max((visit(u, seen | {key}) for u in ups), default=-1)
        return depth[key]

    for key in nodes:
        visit(key, frozenset())
    return depth


def render_svg(nodes: Mapping[str, Node], title: str) -> str:
    """A self-contained SVG of the graph, top to bottom: one row per depth, arrows from each input to its reader;
    an edge that skips rows runs in a lane of its own to the right of the boxes."""
    depth = _layers(nodes)
    rows: dict[int, list[str]] = {}
    for key in sorted(nodes, key=lambda k: (depth[k], nodes[k].stage)):
        rows.setdefault(depth[key], []).append(key)
    cols = max(len(v) for v in rows.values())
    long_edges = [(up, key, role) for key, node in nodes.items() for role, up in node.upstream.items()
                  if up in nodes and depth[key] - depth[up] > 1]
    boxes_w = cols * BOX_W + (cols - 1) * COL_GAP
    width = MARGIN * 2 + boxes_w + LANE_W * len(long_edges) + 40
    height = TITLE_H + MARGIN * 2 + len(rows) * BOX_H + (len(rows) - 1) * ROW_GAP
    pos: dict[str, tuple[float, float]] = {}
    for row, keys in rows.items():
        left = MARGIN + (boxes_w - (len(keys) * BOX_W + (len(keys) - 1) * COL_GAP)) / 2
        for i, key in enumerate(keys):
            pos[key] = (left + i * (BOX_W + COL_GAP), TITLE_H + MARGIN + row * (BOX_H + ROW_GAP))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans, Arial, sans-serif">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{MARGIN}" y="{MARGIN + 12}" font-size="16" font-weight="bold">{escape(title)}</text>']

    def edge(d: str, label: str, lx: float, ly: float, anchor: str) -> None:
        out.append(f'<path d="{d}" fill="none" stroke="#555" stroke-width="1.5" marker-end="url(#arrow)"/>')
        if label:
            out.append(f'<text x="{lx:.0f}" y="{ly:.0f}" font-size="11" fill="#555" '
                       f'text-anchor="{anchor}">{escape(label)}</text>')

    for key, node in nodes.items():
        for role, up in node.upstream.items():
            if up in pos and depth[key] - depth[up] <= 1:
                (x0, y0), (x1, y1) = pos[up], pos[key]
                a, b = (x0 + BOX_W / 2, y0 + BOX_H), (x1 + BOX_W / 2, y1)
                mid = (a[1] + b[1]) / 2
                edge(f"M{a[0]:.0f},{a[1]:.0f} C{a[0]:.0f},{mid:.0f} {b[0]:.0f},{mid:.0f} {b[0]:.0f},{b[1]:.0f}",
                     "" if role == nodes[up].stage else role, (a[0] + b[0]) / 2 + 6, mid + 4, "start")
    right = MARGIN + boxes_w
    for lane, (up, key, role) in enumerate(sorted(long_edges, key=lambda e: depth[e[1]] - depth[e[0]])):
        (x0, y0), (x1, y1) = pos[up], pos[key]
        a, b = (x0 + BOX_W, y0 + BOX_H / 2 + 6), (x1 + BOX_W, y1 + BOX_H / 2 - 6)
        lane_x = right + LANE_W * (lane + 1)
        edge(f"M{a[0]:.0f},{a[1]:.0f} C{lane_x:.0f},{a[1]:.0f} {lane_x:.0f},{b[1]:.0f} {b[0]:.0f},{b[1]:.0f}",
             "" if role == nodes[up].stage else role, lane_x - 0.25 * (lane_x - a[0]) + 3, (a[1] + b[1]) / 2,
             "start")
    for key, node in nodes.items():
        x, y = pos[key]
        fill = "#e8f0fe" if node.stage != "register" else "#e6f4ea"
        out += [f'<g><title>{escape(node.stage)}: output {escape(node.digest)}, run {escape(node.run_id)}</title>',
                f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{fill}" '
                f'stroke="#3c4043"/>',
                f'<text x="{x + 10:.0f}" y="{y + 20:.0f}" font-size="14" font-weight="bold">'
                f'{escape(node.stage)}</text>',
                f'<text x="{x + BOX_W - 10:.0f}" y="{y + 20:.0f}" font-size="11" fill="#5f6368" '
                f'text-anchor="end">{escape(CAPTIONS.get(node.stage, ""))}</text>',
                f'<text x="{x + 10:.0f}" y="{y + 38:.0f}" font-size="11" font-family="DejaVu Sans Mono, monospace">'
                f'digest {escape(node.digest[:12] or "-")}</text>',
                f'<text x="{x + 10:.0f}" y="{y + 55:.0f}" font-size="10" font-family="DejaVu Sans Mono, monospace">'
                f'run {escape(node.run_id or "-")}</text></g>']
    out.append("</svg>")
    return "\n".join(out)


def lineage_svg(c: MlflowClient, root: Node, inputs: Mapping[str, StageResult], title: str) -> str:
    """The SVG of ``root`` (the register stage) and its upstream stages."""
    return render_svg(stage_graph(c, root, inputs), title)
