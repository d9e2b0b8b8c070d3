import pandas as pd
import pytest

from erasure_pipeline import contracts
from erasure_pipeline.contracts import LandingContractError


def _csv(text: str, name: str) -> pd.DataFrame:
    return contracts.validate(contracts.read_landing_bytes(text.encode(), name), contracts.table_of(name), name)


def test_valid_files_are_normalised():
    df = _csv("subject_id,consent_training,age\na@x,yes,30\nb@x,0,40\n", "subjects/batch1.csv")
    assert df["consent_training"].tolist() == [True, False]
    ev = _csv("event_id,subject_id,ts\ne1,a@x,2026-01-01T10:00:00Z\n", "events/e.csv")
    assert str(ev["ts"].dtype).startswith("datetime64")


@pytest.mark.parametrize(
    "name,text,column,row,problem",
    [
        ("events/e.csv", "event_id,subject_id\ne1,a@x\n", "ts", None, "missing"),
        ("events/e.csv", "event_id,subject_id,ts\ne1,a@x,2026-01-01\ne2,b@x,not-a-date\n", "ts", 2, "timestamp"),
        ("subjects/s.csv", "subject_id,consent_training\na@x,true\n,false\n", "subject_id", 2, "empty id"),
        ("subjects/s.csv", "subject_id,consent_training\na@x,true\nb@x,maybe\n", "consent_training", 2, "boolean"),
        ("tickets/t.csv", "ticket_id,subject_id,created_at,text\nt1,a@x,2026-01-01,hi\nt1,b@x,2026-01-02,yo\n", "ticket_id", 2, "duplicate"),
    ],
)
def test_contract_errors_name_file_column_and_first_bad_row(name, text, column, row, problem):
    with pytest.raises(LandingContractError) as err:
        _csv(text, name)
    e = err.value
    assert (e.file, e.column, e.row) == (name, column, row)
    assert problem in str(e) and name in str(e) and f"column '{column}'" in str(e)
    if row:
        assert f"row {row} (line {row + 1})" in str(e)
    assert "b@x" not in str(e)  # values are never echoed


def test_parquet_wrong_type_for_ids():
    from erasure_pipeline.storage.lake import table_to_bytes

    data = table_to_bytes(pd.DataFrame({"subject_id": [1, 2], "consent_training": [True, False]}))
    with pytest.raises(LandingContractError, match=r"subjects/s.parquet, column 'subject_id': must hold strings"):
        contracts.validate(contracts.read_landing_bytes(data, "subjects/s.parquet"), "subjects", "subjects/s.parquet")


def test_table_of():
    assert contracts.table_of("events/2026-11.parquet") == "events"
    assert contracts.table_of("tickets_2026.csv") == "tickets"
    assert contracts.table_of("readme.txt") is None
