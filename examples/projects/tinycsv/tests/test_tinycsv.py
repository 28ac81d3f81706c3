from tinycsv import join_record, split_record


def test_simple_record() -> None:
    assert split_record("a,b,c") == ["a", "b", "c"]


def test_trailing_separator_keeps_an_empty_last_field() -> None:
    assert split_record("a,b,") == ["a", "b", ""]


def test_round_trip() -> None:
    for fields in (["x", "", "z"], ["only"], ["a", "b", ""]):
        assert split_record(join_record(fields)) == fields


def test_other_separator() -> None:
    assert split_record("1;2;3", sep=";") == ["1", "2", "3"]
