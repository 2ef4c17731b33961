"""MkDocs hooks: the pages and tables that are generated at build time, never written by hand.

- ``configuration.md``: every key of :class:`recon_core.config.ReconConfig` with its type,
  default and the ``#:`` comment above it in ``recon_core/config.py``; the module's
  constants; the named presets (``recon_core/presets/*.yaml``) with their keys.
- ``api/*.md``: one mkdocstrings ``:::`` block per module found in the source tree, so a
  new module appears and a removed one disappears without editing a page.
- ``changelog.md`` and ``docker.md``: ``CHANGELOG.md`` and ``docker/README.md`` of the
  repository, as they are.
- Tables of results files in ``docs/``: a line ``<!-- rtcine-table: KIND FILE -->`` in a
  page becomes the table of ``docs/FILE`` (KIND ``bench``: ``rtcine bench --json``;
  ``compare``: ``rtcine compare --json``; ``realtime-quality``:
  ``benchmarks/realtime_quality.py --json``); ``<!-- rtcine-table: cli COMMAND -->`` the
  ``rtcine COMMAND --help`` text; ``<!-- rtcine-table: chains all -->`` the chains in
  ``chains/`` with the first paragraph of their leading comment and their properties;
  ``<!-- rtcine-table: models all -->`` a card per shipped model (``recon_core/models/*.yaml``);
  ``<!-- rtcine-table: docstring MODULE -->`` the module's docstring as Markdown (the
  methods page: its equations as the code documents them; the API reference keeps the
  anchors).

Anything missing (a key without its comment, a results file, an unknown table kind) fails
the build with a message naming it.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import math
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
if str(ROOT) not in sys.path:          # the code of this checkout, whatever else is installed
    sys.path.insert(0, str(ROOT))

#: generated API page -> (package, subpackages shown on their own page instead, title)
API_PAGES = {
    "api/recon_core.md": ("recon_core", ("recon_core.networks", "recon_core.training"),
                          "recon_core: the reconstruction"),
    "api/networks.md": ("recon_core.networks", (), "recon_core.networks: the learned reconstructions"),
    "api/training.md": ("recon_core.training", (), "recon_core.training: datasets, training, losses"),
    "api/gadgets.md": ("gadgets", (), "gadgets: stream handling and the Gadgetron entry points"),
    "api/rtcine.md": ("rtcine", (), "rtcine: the command line"),
}

TABLE_MARKER = re.compile(r"^<!-- rtcine-table: (\S+) (\S+) -->$", re.M)


# --------------------------------------------------------------------------- hooks

def on_files(files, config):
    pages = {"configuration.md": configuration_page(), "changelog.md": _read("CHANGELOG.md"),
             "docker.md": _read("docker/README.md")}
    pages.update({uri: api_page(uri, *spec) for uri, spec in API_PAGES.items()})
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    def table(match):
        kind, name = match.groups()
        if kind == "cli":
            return cli_help(name, page.file.src_uri)
        if kind == "chains":
            return chains_table(page.file.src_uri)
        if kind == "models":
            return model_cards(page.file.src_uri)
        if kind == "docstring":
            return module_docstring(name, page.file.src_uri)
        makers = {"bench": bench_table, "compare": compare_table, "realtime-quality": realtime_quality_table}
        if kind not in makers:
            raise PluginError(f"{page.file.src_uri}: unknown table kind {kind!r} "
                              f"(known: {sorted(makers) + ['chains', 'cli', 'docstring', 'models']})")
        path = DOCS / name
        if not path.is_file():
            raise PluginError(f"{page.file.src_uri}: results file docs/{name} does not exist")
        return makers[kind](json.loads(path.read_text()))
    return TABLE_MARKER.sub(table, markdown)


# --------------------------------------------------------------------------- helpers

def _md(text: str) -> str:
    """reST roles of the docstrings (``:class:`X```) as Markdown code."""
    return re.sub(r":(?:class|func|data|meth|mod|attr):`~?\.?([^`]+)`", r"`\1`", text)


def _cell(text: str) -> str:
    return _md(" ".join(text.split())).replace("|", "\\|")


def _value(v) -> str:
    if isinstance(v, bool):
        return "`true`" if v else "`false`"
    if isinstance(v, str):
        return f"`{v}`" if v else '`""` (empty)'
    if isinstance(v, tuple):
        return ", ".join(_value(x) for x in v)
    return f"`{v!r}`"


def _comment_above(lines: list[str], lineno: int) -> str | None:
    """The ``#:`` comment block right above line ``lineno`` (1-based), or None."""
    block, i = [], lineno - 2
    while i >= 0 and lines[i].strip().startswith("#:"):
        block.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return " ".join(block) if block else None


# --------------------------------------------------------------------------- configuration

def configuration_page() -> str:
    source_path = ROOT / "recon_core" / "config.py"
    source = source_path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    config = importlib.import_module("recon_core.config")
    defaults = {f.name: f for f in dataclasses.fields(config.ReconConfig)}

    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ReconConfig"), None)
    if cls is None:
        raise PluginError("recon_core/config.py has no class ReconConfig")
    groups, previous_line = [], None
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        comment = _comment_above(lines, node.lineno)
        if comment is not None:
            groups.append((comment, [name]))
        elif groups and previous_line == node.lineno - 1:
            groups[-1][1].append(name)            # shares the comment of the field right above
        else:
            raise PluginError(f"recon_core/config.py:{node.lineno}: configuration key {name!r} has no "
                              f"'#:' comment above it (the configuration page is generated from them)")
        previous_line = node.end_lineno
    documented = [n for _, names in groups for n in names]
    missing = sorted(set(defaults) - set(documented))
    if missing:
        raise PluginError(f"recon_core/config.py: keys {missing} are not plain annotated fields of ReconConfig")

    def default(name):
        f = defaults[name]
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory()

    def kind(name):
        t = defaults[name].type
        return t if isinstance(t, str) else t.__name__

    out = ["# Configuration keys", "",
           "<!-- generated from recon_core/config.py by docs/hooks/rtcine_docs.py: edit the code, "
           "not this page -->", "",
           "On the command line: `--config recon.yaml` (a YAML mapping of keys), `--set KEY=VALUE` "
           "(repeatable), `--preset NAME`; in a chain: `<property name=\"KEY\" value=\"VALUE\"/>` "
           "elements of the `<external>` node's `<configuration>`.", ""]
    doc = ast.get_docstring(tree) or ""
    paragraphs = [p for p in doc.split("\n\n")[1:] if p.strip()]
    out += [_md(" ".join(p.split())) + "\n" for p in paragraphs]
    out += ["## Keys", "", "This table is generated from `ReconConfig`'s fields and the comments above them.", "",
            "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for comment, names in groups:
        keys = "<br>".join(f"`{n}`" for n in names)
        types = "<br>".join(kind(n) for n in names)
        values = "<br>".join(_value(default(n)) for n in names)
        out.append(f"| {keys} | {types} | {values} | {_cell(comment)} |")

    out += ["", "## Constants", "", "| name | value | meaning |", "| --- | --- | --- |"]
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if not name.isupper():
                continue
            value = getattr(config, name)
            if isinstance(value, str) and Path(value).is_absolute():
                path = Path(value).resolve()
                value = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
            if not isinstance(value, (str, int, float, tuple)):
                continue
            out.append(f"| `{name}` | {_value(value)} | {_cell(_comment_above(lines, node.lineno) or '')} |")

    presets = getattr(config, "presets", None)
    if presets is not None:
        out += ["", "## Presets", "",
                "Named sets of keys, one file each in `recon_core/presets/`: `--preset NAME` on the command "
                "line, `preset: NAME` in YAML, `<property name=\"preset\" value=\"NAME\"/>` in a chain. "
                "Keys given beside a preset override it.", "",
                "| preset | what it is | keys |", "| --- | --- | --- |"]
        for name, spec in sorted(presets().items()):
            keys = ", ".join(f"`{k}: {v}`" for k, v in spec["keys"].items())
            out.append(f"| `{name}` | {_cell(spec['description'])} | {keys} |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- API reference

def _modules(package: str) -> list[str]:
    """Dotted names of ``package`` and every module below it, from the source tree."""
    base = ROOT.joinpath(*package.split("."))
    names = []
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return sorted(names, key=lambda n: (n != package, n))


def api_page(uri: str, package: str, elsewhere: tuple, title: str) -> str:
    out = [f"# {title}", "",
           f"<!-- generated by docs/hooks/rtcine_docs.py: one block per module of {package} -->", ""]
    for module in _modules(package):
        if any(module == e or module.startswith(e + ".") for e in elsewhere):
            continue
        out += [f"::: {module}", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- files of the repository

def _read(name: str) -> str:
    path = ROOT / name
    if not path.is_file():
        raise PluginError(f"{name} does not exist (the documentation shows it)")
    return path.read_text()


# --------------------------------------------------------------------------- results tables

def _f(v, digits=1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{digits}f}"


def bench_table(results: dict) -> str:
    """The numbers of ``rtcine bench --json``, one row per method."""
    rows = ["| method | p50 | p95 | p99 | max | p99* | fps | fps / acq. | updates / frame | peak RSS MB | "
            "PSNR | PSNR* | offline (*) | maps@ |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        lat, steady = r["latency_ms"], r.get("latency_steady_ms") or {}
        ratio = r["output_fps"] / r["acquisition_fps"] if r.get("acquisition_fps") else None
        offline = ""
        if r.get("offline_psnr") is not None:
            offline = f"{_f(r['offline_psnr'], 2)} ({_f(r.get('offline_psnr_steady'), 2)})"
        updates = _f(r.get("iterations_per_frame")) if r.get("iterations_per_frame") else "-"
        maps = r.get("espirit_from_frame")
        rows.append(f"| `{name}` | {_f(lat['p50'])} | {_f(lat['p95'])} | {_f(lat['p99'])} | {_f(lat['max'])} | "
                    f"{_f(steady.get('p99'))} | {_f(r['output_fps'])} | {_f(ratio, 2)} | {updates} | "
                    f"{_f(r.get('peak_rss_mb'), 0)} | {_f(r.get('psnr'), 2)} | {_f(r.get('psnr_steady'), 2)} | "
                    f"{offline} | {'-' if maps is None else maps} |")
    return "\n".join(rows)


def compare_table(results: dict) -> str:
    """The numbers of ``rtcine compare --json``: every split and noise level side by side."""
    columns = [(split, noise) for split in results for noise in results[split]]
    methods = list(next(iter(results[columns[0][0]].values())))
    head = " | ".join(f"{split}{'' if float(noise) == 0 else f', +{float(noise):.0%} noise'} PSNR dB | SSIM"
                      for split, noise in columns)
    rows = [f"| method | {head} | DC res | ms/frame |",
            "| --- |" + " --- | --- |" * len(columns) + " --- | --- |"]
    for m in methods:
        cells = []
        for split, noise in columns:
            r = results[split][noise].get(m)
            cells += [_f(r["psnr"], 2), _f(r["ssim"], 3)] if r else ["", ""]
        first = results[columns[0][0]][columns[0][1]][m]
        rows.append(f"| `{m}` | {' | '.join(cells)} | {_f(first['dc_residual'], 3)} | "
                    f"{_f(1000 * first['seconds_per_frame'], 0)} |")
    return "\n".join(rows)


def realtime_quality_table(results: list) -> str:
    """The rows of ``benchmarks/realtime_quality.py --json``: PSNR dB / SSIM per data and model."""
    models = list(dict.fromkeys(r["model"] for r in results))
    data = list(dict.fromkeys(r["data"] for r in results))
    cell = {(r["data"], r["model"]): r for r in results}
    rows = ["| data | " + " | ".join(f"`{m}`" for m in models) + " |", "| --- |" + " --- |" * len(models)]
    for d in data:
        cells = []
        for m in models:
            r = cell.get((d, m))
            cells.append("" if r is None else _f(r["psnr"], 2) + (f" / {_f(r['ssim'], 3)}" if "ssim" in r else ""))
        rows.append(f"| `{d}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- command line and chains

def cli_help(command: str, where: str) -> str:
    """``rtcine COMMAND --help`` as a code block (the parser of :mod:`rtcine.cli`)."""
    import argparse
    import os

    os.environ["COLUMNS"] = "100"
    cli = importlib.import_module("rtcine.cli")
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if command not in sub.choices:
        raise PluginError(f"{where}: rtcine has no command {command!r} (commands: {sorted(sub.choices)})")
    return "```text\n" + sub.choices[command].format_help().rstrip() + "\n```"


def chains_table(where: str) -> str:
    """The chains of ``chains/``: what each runs (its comment's first paragraph) and its properties."""
    import xml.etree.ElementTree as ET

    rows = ["| chain | what runs | properties |", "| --- | --- | --- |"]
    paths = sorted((ROOT / "chains").glob("*.xml"))
    if not paths:
        raise PluginError(f"{where}: no chains in chains/")
    for path in paths:
        text = path.read_text()
        comment = re.search(r"<!--(.*?)-->", text, re.S)
        if comment is None:
            raise PluginError(f"chains/{path.name} has no leading comment saying what it runs")
        first = comment.group(1).strip().split("\n\n")[0]
        first = re.sub(r"^rtcine:\s*", "", " ".join(first.split()))
        first = " ".join(re.split(r"(?<=\.)\s+", first)[:2])      # its first two sentences
        props = [f"`{p.get('name')}={p.get('value')}`" for p in ET.fromstring(text.encode()).iter("property")]
        connect = [f"`<connect port=\"{c.get('port')}\"/>`" for c in ET.fromstring(text.encode()).iter("connect")]
        rows.append(f"| `{path.name}` | {_cell(first)} | {', '.join(connect + props) or '-'} |")
    return "\n".join(rows)


def model_cards(where: str) -> str:
    """A card per shipped model, from its YAML: what it is, how it was trained, what it scored."""
    import yaml

    paths = sorted((ROOT / "recon_core" / "models").glob("*.yaml"))
    if not paths:
        raise PluginError(f"{where}: no shipped models in recon_core/models/")
    out = []
    for path in paths:
        meta = yaml.safe_load(path.read_text())
        training = meta.get("training") or {}
        name = path.stem[:-len("_small")] if path.stem.endswith("_small") else path.stem
        out += [f"### `{name}`", "",
                f"`recon_core/models/{path.name}` (+ `.safetensors`): kind `{meta['kind']}`, "
                + ", ".join(f"{k} {v}" for k, v in (meta.get("arch") or {}).items()) + ".", ""]
        if training.get("note"):
            out += [_cell(training["note"]), ""]
        last = (training.get("val") or [{}])[-1]
        facts = [f"{training.get('steps', '?')} steps in its last training run"]
        if last:
            facts.append("validation PSNR " + _f(last.get("psnr"), 2) + " dB, SSIM " + _f(last.get("ssim"), 3)
                         + (f", streaming PSNR {_f(last['stream_psnr'], 2)} dB" if "stream_psnr" in last else ""))
        if training.get("seconds_per_step"):
            facts.append(f"{_f(training['seconds_per_step'], 2)} s per step on the 2-core CPU")
        if meta.get("streaming"):
            facts.append("streaming schedule " + ", ".join(f"{k} {v}" for k, v in meta["streaming"].items()))
        out += ["; ".join(facts) + ".", ""]
        if training.get("commands"):
            out += ["```text"] + list(training["commands"]) + ["```", ""]
    return "\n".join(out)


def module_docstring(module: str, where: str) -> str:
    """The docstring of ``module`` (read from its source, not imported) as Markdown: reST
    roles as code, ``text::`` as ``text:``, section underlines as bold lines, a blank line
    before an indented block so that it is a code block; a link to its API entry below."""
    base = ROOT.joinpath(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if not path.is_file():
        raise PluginError(f"{where}: module {module} does not exist ({path.relative_to(ROOT)})")
    doc = ast.get_docstring(ast.parse(path.read_text()))
    if not doc:
        raise PluginError(f"{where}: module {module} has no docstring")
    lines, out = doc.splitlines(), []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if re.fullmatch(r"[-=~^]{3,}", line.strip()) and out and out[-1].strip():
            out[-1] = f"**{out[-1].strip()}**"
            continue
        if line.rstrip().endswith("::") and not line.strip().startswith("::"):
            line = line.rstrip()[:-1]
        elif line.strip() == "::":
            continue
        out.append(line)
        if nxt.startswith("    ") and line.strip() and not line.startswith("    "):
            out.append("")               # an indented block after a paragraph line: a code block
    return _md("\n".join(out)) + f"\n\n<small>From the docstring of [`{module}`][{module}].</small>"
