"""What the command-line tools are given: every way a catalogue can be wrong is named by file and
line and nothing is half-read; flags and files the traffic cannot use are refused with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.settings import get_settings
from tools.catalogue import CatalogueError, distinct, read_catalogue
from tools.cli import SAMPLE_CATALOGUE, main


def test_jsonl_csv_and_beir_layouts_read_the_same_resources(tmp_path: Path) -> None:
    rows = [{"id": "a", "title": "Fractions", "description": "halves", "subject": "maths"},
            {"id": 7, "title": "Seven"}]
    jsonl = tmp_path / "catalogue.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    csv = tmp_path / "catalogue.csv"
    csv.write_text("id,title,description,subject\na,Fractions,halves,maths\n7,Seven,,\n")
    beir = tmp_path / "corpus.jsonl"
    beir.write_text(json.dumps({"_id": "a", "title": "Fractions", "text": "halves"}) + "\n"
                    + json.dumps({"_id": 7, "title": "Seven", "text": ""}) + "\n")
    # As spreadsheets save it: a byte-order mark, ";" between fields, headers in capitals.
    sheet = tmp_path / "sheet.csv"
    sheet.write_bytes("\ufeffID; Title ;Description;Subject\r\na;Fractions;halves;maths\r\n7;Seven;;\r\n"
                      .encode())
    paths = (jsonl, csv, beir, sheet)
    read = [[(r.id, r.title, r.description) for r in read_catalogue(path)] for path in paths]
    assert read[0] == read[1] == read[2] == read[3] == [("a", "Fractions", "halves"), ("7", "Seven", "")]
    assert len(list(read_catalogue(SAMPLE_CATALOGUE))) == 350


def test_a_catalogues_own_columns_are_kept_in_fields(tmp_path: Path) -> None:
    jsonl = tmp_path / "catalogue.jsonl"
    row = {"id": "a", "title": "Fractions", "grade": 3, "licence": "CC-BY", "free": True, "tags": ["maths"],
           "note": None, "fields": {"series": "Numbers"}}
    jsonl.write_text(json.dumps(row) + "\n")
    csv = tmp_path / "catalogue.csv"
    csv.write_text("id,title,grade,language\na,Fractions,3,fr\nb,Halves,,\n")
    assert next(read_catalogue(jsonl)).fields == {"grade": "3", "licence": "CC-BY", "free": "true",
                                                  "series": "Numbers"}
    first, second = read_catalogue(csv)
    assert (first.fields, first.language, second.fields, second.language) == ({"grade": "3"}, "fr", {}, "")


@pytest.mark.parametrize(("name", "content", "says"), [
    ("broken.jsonl", b'{"id": "a", "title": "x"}\n\n{not json\n', "broken.jsonl:3: not valid JSON"),
    ("array.jsonl", b'{"id": "a", "title": "x"}\n[1]\n', "array.jsonl:2: expected a JSON object, got list"),
    ("string.jsonl", b'"just text"\n', "string.jsonl:1: expected a JSON object"),
    ("untitled.jsonl", b'{"id": "a"}\n', "untitled.jsonl:1: title: Field required"),
    ("typed.jsonl", b'{"id": "a", "title": ["x"]}\n', "typed.jsonl:1: title: Input should be a valid string"),
    ("latin1.jsonl", '{"id": "a", "title": "\u00e9t\u00e9"}\n'.encode("latin-1"), "latin1.jsonl: not UTF-8"),
    ("short.csv", b"id,title\na,x\nb\n", "short.csv:3: title: Field required"),
    ("huge.csv", b"id,title\na,x\nb,\"" + b"y" * 200_000 + b"\"\n", "huge.csv:3: not valid CSV"),
    ("corpus.jsonl", b'{"_id": "1", "text": 5}\n', "corpus.jsonl:1: description"),
    ("nul.jsonl", b'{"id": "a", "title": "x"}\n{"id": "b\\u0000", "title": "y"}\n',
     "nul.jsonl:2: id: Value error, an id must be printable text: U\\+0000 at position 1 is a control"),
    ("escape.csv", b"id,title\n\x1b[31mred,x\n",
     "escape.csv:2: id: Value error, an id must be printable text"),
    ("beir.jsonl", b'{"_id": "d\\u2028", "text": "t"}\n', "beir.jsonl:1: id: .* is a line separator"),
    ("script.csv", b"id,title,url\na,x,javascript:alert(1)\n", "script.csv:2: url: .*absolute http or https"),
    ("relative.jsonl", b'{"id": "a", "title": "x", "url": "/courses/a"}\n',
     "relative.jsonl:1: url: .*absolute http"),
])
def test_a_bad_line_is_named_and_nothing_is_read(tmp_path: Path, name: str, content: bytes,
                                                 says: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CatalogueError, match=f"^{path.parent}/{says}".replace("[", r"\[")):
        list(read_catalogue(path))


def test_texts_longer_than_a_resource_holds_are_cut_and_said(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Real collections hold documents longer than the store keeps; the rankers read far less."""
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"_id": "long", "title": "t" * 600, "text": "w " * 15_000}) + "\n"
                    + json.dumps({"id": "short", "title": "Short", "description": "fine"}) + "\n")
    with caplog.at_level("WARNING", logger="tools.catalogue"):
        long, short = read_catalogue(path)
    assert (len(long.title), len(long.description)) == (500, 20_000) and long.description == ("w " * 10_000)
    assert short.description == "fine"
    said = sorted(r.getMessage() for r in caplog.records)
    assert said == [f"event=catalogue_field_cut path={path} field=description resources=1 max_chars=20000",
                    f"event=catalogue_field_cut path={path} field=title resources=1 max_chars=500"]


def test_an_id_on_two_lines_is_one_resource_the_last_line_and_said(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A file may carry an update after the original, or two resources under one id by mistake: the
    last line wins, the load stores and counts resources (not lines), a warning names a repeat."""
    path = tmp_path / "catalogue.csv"
    path.write_text("id,title\na,First\nb,Other\na,Second\n7,x\n7,y\n")
    with caplog.at_level("WARNING", logger="tools.catalogue"):
        resources = distinct(read_catalogue(path))
    assert [(r.id, r.title) for r in resources] == [("a", "Second"), ("b", "Other"), ("7", "y")]
    assert [r.getMessage() for r in caplog.records] == [
        f"event=catalogue_ids_repeated path={path} ids=2 e.g. id='a' lines=2,4: the last line wins"]


def test_a_missing_file_or_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.jsonl", tmp_path):
        with pytest.raises(CatalogueError, match="cannot read the catalogue"):
            list(read_catalogue(path))


def test_the_command_line_says_what_is_wrong_without_a_traceback(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "title": "x"}\n[1]\n')
    assert main(["load-catalogue", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:2: expected a JSON object, got list") and "Traceback" not in err
    monkeypatch.setenv("EDURANKER_CROSS_CACHE_ENTRIES", "-5")
    get_settings.cache_clear()
    try:
        assert main(["load-catalogue", str(bad)]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert err == "error: EDURANKER_CROSS_CACHE_ENTRIES='-5': Input should be greater than or equal to 0\n"


@pytest.mark.parametrize(("args", "says"), [
    (["--count", "-1"], "argument --count: -1 is out of range: 0 or more"),
    (["--count", "ten"], "argument --count: 'ten' is not a number (int)"),
    (["--skip", "1"], "argument --skip: 1 is out of range: from 0.0 to below 1.0"),
    (["--rate", "nan"], "argument --rate: nan is out of range: 0.0 or more"),
    (["--top-k", "0"], "argument --top-k: 0 is out of range: 1 or more"),
])
def test_traffic_refuses_numbers_it_cannot_use(args: list[str], says: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`--skip 1` would search forever without rating anything; the others make no sense."""
    with pytest.raises(SystemExit) as exited:
        main(["traffic", *args])
    assert exited.value.code == 2 and says in capsys.readouterr().err


def test_traffic_names_a_queries_file_it_cannot_use(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "queries.txt"
    empty.write_text("\n  \n")
    assert main(["traffic", "--queries", str(empty)]) == 2
    assert f"no query in {empty}: nothing to search" in capsys.readouterr().err
    assert main(["traffic", "--queries", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: cannot read it" in capsys.readouterr().err
