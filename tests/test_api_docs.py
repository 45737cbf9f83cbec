"""docs/api.md: generated from the protos with their comments, deterministic, and fresh."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_api_docs.py"

_spec = importlib.util.spec_from_file_location("gen_api_docs", SCRIPT)
gen_api_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_api_docs)

TOY_PROTO = """\
// A toy API for the generator test.
syntax = "proto3";

package mtopt.v1;

import "google/protobuf/timestamp.proto";

// Greets robots.
service Greeter {
  // Says hello; NOT_FOUND for an unknown robot.
  rpc Hello(HelloRequest) returns (stream HelloReply);
}

// Mood of a robot.
enum Mood {
  MOOD_UNSPECIFIED = 0;
  // Everything works.
  MOOD_HAPPY = 1;
}

message HelloRequest {
  // Which robot | pipe.
  string robot_id = 1;
  map<string, int64> counts = 2;
  oneof when {
    google.protobuf.Timestamp at = 3;
    int64 step = 4;  // A trainer step.
  }
  // A nested message.
  message Inner {
    Mood mood = 1;
  }
  repeated Inner inners = 5;
  optional float share = 6;
}

message HelloReply {}
"""


def _toy_root(tmp_path: Path) -> Path:
    (tmp_path / "mtopt" / "v1").mkdir(parents=True)
    (tmp_path / "mtopt" / "v1" / "toy.proto").write_text(TOY_PROTO)
    return tmp_path


def test_docs_api_md_is_fresh():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + "\nfix: run `python scripts/gen_api_docs.py` and commit docs/api.md"


def test_every_element_and_comment_is_rendered(tmp_path):
    text = gen_api_docs.render(_toy_root(tmp_path))
    assert "A toy API for the generator test." in text
    assert "### service `Greeter`" in text and "Greets robots." in text
    assert "#### rpc `Greeter.Hello`" in text and "Says hello; NOT_FOUND for an unknown robot." in text
    assert "`Hello`([`HelloRequest`](#mtopt-v1-hellorequest)) returns (stream [`HelloReply`](#mtopt-v1-helloreply))" in text
    assert "### enum `Mood`" in text and "| `MOOD_HAPPY` | 1 | Everything works. |" in text
    assert "| `robot_id` | 1 | `string` |  | Which robot \\| pipe. |" in text
    assert "| `counts` | 2 | map<`string`, `int64`> | map |" in text
    assert "| `at` | 3 | `google.protobuf.Timestamp` | oneof `when` |" in text
    assert "| `step` | 4 | `int64` | oneof `when` | A trainer step. |" in text
    assert "### message `HelloRequest.Inner`" in text and "A nested message." in text
    assert "| `mood` | 1 | [`Mood`](#mtopt-v1-mood) |" in text
    assert "| `inners` | 5 | [`HelloRequest.Inner`](#mtopt-v1-hellorequest-inner) | repeated |" in text
    assert "| `share` | 6 | `float` | optional |" in text
    assert "CountsEntry" not in text  # map entries are shown as map<K, V>, not as messages
    assert "### message `HelloReply`" in text and "No fields." in text
    assert gen_api_docs.render(_toy_root(tmp_path / "again")) == text  # deterministic


def test_check_fails_on_a_stale_file_and_leaves_it(tmp_path):
    root = _toy_root(tmp_path)
    out = tmp_path / "api.md"
    assert gen_api_docs.main(["--protos", str(root), "--out", str(out), "--check"]) == 1  # missing
    assert gen_api_docs.main(["--protos", str(root), "--out", str(out)]) == 0
    assert gen_api_docs.main(["--protos", str(root), "--out", str(out), "--check"]) == 0
    out.write_text(out.read_text() + "edited by hand\n")
    assert gen_api_docs.main(["--protos", str(root), "--out", str(out), "--check"]) == 1
    assert out.read_text().endswith("edited by hand\n")
