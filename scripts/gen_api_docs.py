#!/usr/bin/env python
"""Generate docs/api.md, the API reference of mtopt.v1, from protos/mtopt/v1/*.proto.

Every service, rpc, message, field, enum and enum value, with the comments written above (or
after) it in the .proto files. The protos are compiled with ``grpc_tools.protoc
--include_source_info`` into a FileDescriptorSet, which carries the comments; the output
depends only on the .proto files, so it is byte-identical from run to run.

Usage:
    python scripts/gen_api_docs.py             # (re)write docs/api.md
    python scripts/gen_api_docs.py --check     # exit 1 if docs/api.md is stale
    python scripts/gen_api_docs.py --out FILE  # write (or --check) another file
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
API_DIR = "mtopt/v1"
DEFAULT_OUT = ROOT / "docs" / "api.md"

# Field numbers inside descriptor.proto, used as SourceCodeInfo.Location paths.
FILE_SYNTAX, FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 12, 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE, SERVICE_METHOD = 2, 2


def descriptor_set(proto_root: Path, files: list[str]):
    """The FileDescriptorSet (with source info) of ``files`` (relative to ``proto_root``)."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="mtopt-api-docs-") as tmp:
        out = Path(tmp) / "api.pb"
        rc = protoc.main(["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}", "--include_source_info",
                          f"--descriptor_set_out={out}", *files])
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read_bytes())
    return fds


class Comments:
    """Leading and trailing comments of a file's elements, keyed by their descriptor path."""

    def __init__(self, file_proto):
        self._by_path = {tuple(loc.path): loc for loc in file_proto.source_code_info.location}

    def text(self, path: tuple[int, ...]) -> str:
        loc = self._by_path.get(path)
        if loc is None:
            return ""
        parts = [clean(c) for c in (loc.leading_comments, loc.trailing_comments)]
        return "\n\n".join(p for p in parts if p)

    def detached(self, path: tuple[int, ...]) -> str:
        loc = self._by_path.get(path)
        return "\n\n".join(clean(c) for c in loc.leading_detached_comments) if loc else ""


def clean(comment: str) -> str:
    """A comment's text without the one space after ``//`` and without trailing blank lines."""
    lines = [line[1:] if line.startswith(" ") else line for line in comment.rstrip().split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def one_line(text: str) -> str:
    """Comment text for a table cell: lines joined, paragraphs separated by <br>, pipes escaped."""
    paragraphs = [" ".join(line.strip() for line in p.split("\n")) for p in text.split("\n\n") if p.strip()]
    return "<br>".join(paragraphs).replace("|", "\\|")


def anchor(full_name: str) -> str:
    return full_name.replace(".", "-").replace("/", "-").lower()


class Renderer:
    """Markdown for a FileDescriptorSet; types of the rendered files are linked."""

    def __init__(self, files):
        self.files = files
        self.local: set[str] = set()
        for f in files:
            for m in f.message_type:
                self._collect(f.package, m)
            for e in f.enum_type:
                self.local.add(f"{f.package}.{e.name}")
        self.maps: dict[str, tuple] = {}
        for f in files:
            for m in f.message_type:
                self._collect_maps(f.package, m)

    def _collect(self, scope: str, m) -> None:
        name = f"{scope}.{m.name}"
        self.local.add(name)
        for n in m.nested_type:
            self._collect(name, n)
        for e in m.enum_type:
            self.local.add(f"{name}.{e.name}")

    def _collect_maps(self, scope: str, m) -> None:
        name = f"{scope}.{m.name}"
        for n in m.nested_type:
            if n.options.map_entry:
                self.maps[f"{name}.{n.name}"] = (n.field[0], n.field[1])
            self._collect_maps(name, n)

    def type_ref(self, type_name: str) -> str:
        name = type_name.lstrip(".")
        short = name[len("mtopt.v1."):] if name.startswith("mtopt.v1.") else name
        return f"[`{short}`](#{anchor(name)})" if name in self.local else f"`{short}`"

    def field_type(self, field) -> str:
        from google.protobuf import descriptor_pb2 as d

        if field.type in (d.FieldDescriptorProto.TYPE_MESSAGE, d.FieldDescriptorProto.TYPE_ENUM):
            entry = self.maps.get(field.type_name.lstrip("."))
            if entry is not None:
                return f"map<{self.field_type(entry[0])}, {self.field_type(entry[1])}>"
            return self.type_ref(field.type_name)
        return f"`{d.FieldDescriptorProto.Type.Name(field.type)[len('TYPE_'):].lower()}`"

    def render(self) -> str:
        out = ["# mtopt.v1 API reference", "",
               "Generated by `scripts/gen_api_docs.py` from `protos/mtopt/v1/*.proto` (the comments are the",
               "protos' own); do not edit by hand: change the protos and run `python scripts/gen_api_docs.py`.",
               "`python scripts/gen_api_docs.py --check` (in `scripts/test.sh`) fails when this file is stale.",
               "Architecture and how the services fit together: [architecture.md](architecture.md).", "",
               "## Files", ""]
        for f in self.files:
            services = ", ".join(f"[`{s.name}`](#{anchor(f'{f.package}.{s.name}')})" for s in f.service)
            out.append(f"- [`{f.name}`](#{anchor(f.name)})" + (f": service {services}" if services else ""))
        out.append("")
        for f in self.files:
            out += self.render_file(f)
        return "\n".join(out).rstrip("\n") + "\n"

    def render_file(self, f) -> list[str]:
        c = Comments(f)
        out = [f'<a id="{anchor(f.name)}"></a>', "", f"## `{f.name}`", ""]
        intro = c.detached((FILE_SYNTAX,)) or c.text((FILE_SYNTAX,))
        if intro:
            out += [intro, ""]
        out.append(f"Package `{f.package}`" + (f"; imports {', '.join(f'`{d}`' for d in f.dependency)}." if f.dependency else "."))
        out.append("")
        for i, s in enumerate(f.service):
            out += self.render_service(f.package, s, c, (FILE_SERVICE, i))
        for i, e in enumerate(f.enum_type):
            out += self.render_enum(f.package, e, c, (FILE_ENUM, i))
        for i, m in enumerate(f.message_type):
            out += self.render_message(f.package, m, c, (FILE_MESSAGE, i))
        return out

    def render_service(self, scope: str, s, c: Comments, path) -> list[str]:
        full = f"{scope}.{s.name}"
        out = [f'<a id="{anchor(full)}"></a>', "", f"### service `{s.name}`", ""]
        if c.text(path):
            out += [c.text(path), ""]
        for i, m in enumerate(s.method):
            req = ("stream " if m.client_streaming else "") + self.type_ref(m.input_type)
            resp = ("stream " if m.server_streaming else "") + self.type_ref(m.output_type)
            out += [f'<a id="{anchor(full + "." + m.name)}"></a>', "", f"#### rpc `{s.name}.{m.name}`", "",
                    f"`{m.name}`({req}) returns ({resp})", ""]
            text = c.text(path + (SERVICE_METHOD, i))
            if text:
                out += [text, ""]
        return out

    def render_enum(self, scope: str, e, c: Comments, path) -> list[str]:
        full = f"{scope}.{e.name}"
        short = full[len("mtopt.v1."):] if full.startswith("mtopt.v1.") else full
        out = [f'<a id="{anchor(full)}"></a>', "", f"### enum `{short}`", ""]
        if c.text(path):
            out += [c.text(path), ""]
        out += ["| value | number | description |", "|---|---|---|"]
        for i, v in enumerate(e.value):
            out.append(f"| `{v.name}` | {v.number} | {one_line(c.text(path + (ENUM_VALUE, i)))} |")
        return out + [""]

    def render_message(self, scope: str, m, c: Comments, path) -> list[str]:
        if m.options.map_entry:
            return []
        full = f"{scope}.{m.name}"
        short = full[len("mtopt.v1."):] if full.startswith("mtopt.v1.") else full
        out = [f'<a id="{anchor(full)}"></a>', "", f"### message `{short}`", ""]
        if c.text(path):
            out += [c.text(path), ""]
        if m.field:
            out += ["| field | number | type | label | description |", "|---|---|---|---|---|"]
            for i, field in enumerate(m.field):
                out.append(f"| `{field.name}` | {field.number} | {self.field_type(field)} | "
                           f"{self.label(m, field)} | {one_line(c.text(path + (MESSAGE_FIELD, i)))} |")
        else:
            out.append("No fields.")
        out.append("")
        for i, e in enumerate(m.enum_type):
            out += self.render_enum(full, e, c, path + (MESSAGE_ENUM, i))
        for i, n in enumerate(m.nested_type):
            out += self.render_message(full, n, c, path + (MESSAGE_NESTED, i))
        return out

    def label(self, m, field) -> str:
        from google.protobuf import descriptor_pb2 as d

        if field.type_name.lstrip(".") in self.maps:
            return "map"
        if field.label == d.FieldDescriptorProto.LABEL_REPEATED:
            return "repeated"
        if field.HasField("oneof_index"):
            oneof = m.oneof_decl[field.oneof_index].name
            return "optional" if field.proto3_optional else f"oneof `{oneof}`"
        return ""


def render(proto_root: Path = PROTO_ROOT) -> str:
    """docs/api.md's text for the .proto files under ``proto_root``/mtopt/v1."""
    files = sorted(p.relative_to(proto_root).as_posix() for p in (proto_root / API_DIR).glob("*.proto"))
    if not files:
        raise SystemExit(f"no .proto files under {proto_root / API_DIR}")
    fds = descriptor_set(proto_root, files)
    wanted = set(files)
    return Renderer(sorted((f for f in fds.file if f.name in wanted), key=lambda f: f.name)).render()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown file to write (default docs/api.md)")
    parser.add_argument("--protos", type=Path, default=PROTO_ROOT, help="proto root holding mtopt/v1/*.proto (default protos/)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if --out differs from freshly generated text")
    args = parser.parse_args(argv)
    text = render(args.protos)
    if args.check:
        current = args.out.read_text() if args.out.is_file() else None
        if current != text:
            what = "is missing" if current is None else "is stale"
            print(f"{args.out} {what}: run `python scripts/gen_api_docs.py` and commit the result", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
