"""Batch transform's outputs, against a small stand-in model server on 127.0.0.1 (fast; the real `serve` is in
test_transform.py): every picture is tried past a refused one (as SageMaker does), `.out` files are written
atomically, `--resume` sends only the pictures without one, and the summary leaves out stale outputs, counts
a truncated one as failed, and writes no spreadsheet formula."""
import csv
import http.server
import json
import threading
from pathlib import Path

import pytest

import launch
from launcher import transform


class Answers(http.server.BaseHTTPRequestHandler):
    """A body starting with `bad` is refused (400); any other gets the body's first line as its top label."""
    received = []

    def do_POST(self):  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Answers.received.append(body)
        if body.startswith(b"bad"):
            status, answer = 400, {"message": "cannot identify image file \x1b[2J"}
        else:
            label = body.decode().splitlines()[0]
            status, answer = 200, {"predictions": [[{"label": label, "index": 0, "probability": 0.75},
                                                    {"label": "other", "index": 1, "probability": 0.25}]]}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Answers.received = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def pictures(folder, bodies):
    for name, body in bodies.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(body.encode())
    return folder


def test_a_refused_picture_does_not_stop_the_job(tmp_path, server):
    data = pictures(tmp_path / "in", {"a.jpg": "fox", "b.jpg": "bad one", "c/d.jpg": "whale", "e.jpg": "bad two"})
    done, bad = transform.run(data, tmp_path / "out", server, max_concurrent=1)
    assert done == 2 and sorted(Path(file).name for file, _, _ in bad) == ["b.jpg", "e.jpg"]
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.out")) == [
        "a.jpg.out", "c/d.jpg.out"]
    assert len(Answers.received) == 4  # every picture was sent


def test_stop_on_bad_stops_at_the_first(tmp_path, server):
    data = pictures(tmp_path / "in", {"a.jpg": "bad", "b.jpg": "fox"})
    with pytest.raises(transform.LauncherError, match="a.jpg: refused with 400.*--stop-on-bad") as raised:
        transform.run(data, tmp_path / "out", server, max_concurrent=1, stop_on_bad=True)
    assert "\x1b" not in str(raised.value)  # the server's message is shown without its escape sequence
    assert not list((tmp_path / "out").rglob("*.out"))


def test_out_files_are_never_written_under_their_final_name(tmp_path, server, monkeypatch):
    """Written to a temporary file and renamed (contract.atomic_write): a crash leaves whole files only."""
    write_bytes = Path.write_bytes

    def refuse_final_names(path, data):
        assert not path.name.endswith(transform.OUT_SUFFIX), f"{path} written in place"
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", refuse_final_names)
    data = pictures(tmp_path / "in", {"a.jpg": "fox", "b.jpg": "whale"})
    assert transform.run(data, tmp_path / "out", server, max_concurrent=2) == (2, [])
    assert json.loads((tmp_path / "out" / "b.jpg.out").read_bytes())["predictions"][0][0]["label"] == "whale"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.jpg.out", "b.jpg.out"]  # no temp files left


def test_resume_sends_only_the_pictures_without_an_output(tmp_path, server, monkeypatch, capsys):
    data = pictures(tmp_path / "in", {"a.jpg": "fox", "b.jpg": "whale", "c.jpg": "frog"})
    out = tmp_path / "out"
    transform.run(data, out, server, max_concurrent=1, files=[data / "a.jpg"])
    Answers.received = []
    monkeypatch.setattr(transform.serving, "deploy", lambda **_: None)  # the stand-in server is already up
    monkeypatch.setattr(transform.serving, "delete", lambda port: None)
    monkeypatch.setattr(transform.trees, "server_dir", lambda port: tmp_path / "serving")
    done, bad, complete = transform.local(data, out, port=server, max_concurrent=1, resume=True)
    assert (done, bad, complete) == (2, [], True)
    assert sorted(Answers.received) == [b"frog", b"whale"]  # a.jpg was not sent again
    stdout = capsys.readouterr().out
    assert "1 of 3 picture(s) already have their .out file" in stdout and "Summary of 3 picture(s)" in stdout


def test_summary_flags_stale_outputs_counts_truncated_ones_and_writes_no_formula(tmp_path, capsys, server):
    data = pictures(tmp_path / "in", {"a.jpg": "=HYPERLINK(\"http://x\")", "b.jpg": "@SUM(A1)", "c.jpg": "fox",
                                      "d.jpg": "\x1b[31mred"})
    out = tmp_path / "out"
    transform.run(data, out, server, max_concurrent=1)
    (out / "c.jpg.out").write_bytes((out / "c.jpg.out").read_bytes()[:20])  # truncated
    (out / "gone.jpg.out").write_bytes((out / "a.jpg.out").read_bytes())    # an earlier run's, no input now

    code = launch.main(["transform", "--summarize", str(out), "--data", str(data)])
    stdout = capsys.readouterr().out
    assert code == 2  # the summary is written, but one output could not be read
    assert "Summary of 3 picture(s)" in stdout
    assert "1 stale .out file(s) with no input picture" in stdout and "  gone.jpg" in stdout
    assert "1 .out file(s) are not a prediction (truncated?), counted as failed:\n  c.jpg" in stdout
    assert "\x1b" not in stdout and "  red  " in stdout  # the label's escape sequence is not printed
    with open(out / transform.SUMMARY_FILE, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["file"] for row in rows] == ["a.jpg", "b.jpg", "d.jpg"]
    assert rows[0]["label"] == "'=HYPERLINK(\"http://x\")" and rows[1]["label"] == "'@SUM(A1)"
    assert rows[1]["top_k"].startswith("'@SUM(A1):0.750000")
    assert all(not cell.startswith(transform.FORMULA_STARTS) for row in rows for cell in row.values())

    # Without --data nothing is known about the inputs: every readable output is summarised.
    assert launch.main(["transform", "--summarize", str(out)]) == 2
    assert "Summary of 4 picture(s)" in capsys.readouterr().out


@pytest.mark.parametrize("cell, written", [("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@A1", "'@A1"),
                                           ("\tx", "'\tx"), ("\rx", "'\rx"), ("fox", "fox"), ("0.5", "0.5")])
def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(cell, written):
    assert transform.csv_cell(cell) == written
