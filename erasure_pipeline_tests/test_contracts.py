import pandas as pd
import pytest

from erasure_pipeline.app.demo import demo_policy
from erasure_pipeline.core import contracts
from erasure_pipeline.core.contracts import LandingContractError
from erasure_pipeline.core.policy import parse_policy

# A declaration that reads nothing from the demo's tables but their contract columns.
POLICY = parse_policy({
    "datasets": {"subjects": {"id": "subject_id", "subject": "subject_id"},
                 "events": {"id": "event_id", "subject": "subject_id", "timestamp": "ts"},
                 "tickets": {"id": "ticket_id", "subject": "subject_id", "timestamp": "created_at", "text": ["text"]}},
    "consent": {"column": "consent_training"}, "features": {"dataset": "subjects"},
    "models": {"model": {"label": "converted", "task": "binary"}}})
TABLES = contracts.contracts_for(POLICY)


def _csv(text: str, name: str) -> pd.DataFrame:
    contract = TABLES[contracts.table_of(name, TABLES)]
    return contracts.validate(contracts.read_landing_bytes(text.encode(), name, contract), contract, name)


def test_valid_files_are_normalised():
    df = _csv("subject_id,consent_training,converted,age\na@x,yes,no,30\nb@x,0,yes,40\n", "subjects/batch1.csv")
    assert df["consent_training"].tolist() == [True, False]
    ev = _csv("event_id,subject_id,ts\ne1,a@x,2026-01-01T10:00:00Z\n", "events/e.csv")
    assert str(ev["ts"].dtype).startswith("datetime64")


@pytest.mark.parametrize(
    "name,text,column,row,problem",
    [
        ("events/e.csv", "event_id,subject_id\ne1,a@x\n", "ts", None, "missing"),
        ("events/e.csv", "event_id,subject_id,ts\ne1,a@x,2026-01-01\ne2,b@x,not-a-date\n", "ts", 2, "timestamp"),
        ("subjects/s.csv", "subject_id,consent_training,converted\na@x,true,1\n,false,0\n", "subject_id", 2, "empty subject id in 1 row; declare datasets.subjects.missing_subject"),
        ("subjects/s.csv", "subject_id,consent_training,converted\na@x,true,1\nb@x,maybe,0\n", "consent_training", 2, "boolean"),
        ("subjects/s.csv", "subject_id,consent_training\na@x,true\n", "converted", None, "column named by models.model.label is missing"),
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
    from erasure_pipeline.stores.lake import table_to_bytes

    data = table_to_bytes(pd.DataFrame({"subject_id": [1, 2], "consent_training": [True, False], "converted": [0, 1]}))
    with pytest.raises(LandingContractError, match=r"subjects/s.parquet, column 'subject_id': must hold strings"):
        contracts.validate(contracts.read_landing_bytes(data, "subjects/s.parquet"), TABLES["subjects"], "subjects/s.parquet")


def test_table_of():
    assert contracts.table_of("events/2026-11.parquet", TABLES) == "events"
    assert contracts.table_of("tickets_2026.csv", TABLES) == "tickets"
    assert contracts.table_of("readme.txt", TABLES) is None
    # the longest declared name that prefixes a file wins: order_items_1.csv is not an "orders" file
    assert contracts.table_of("order_items_1.csv", ["order", "order_items"]) == "order_items"
    assert contracts.table_of("orders/x.parquet", ["order", "orders"]) == "orders"


def test_every_column_the_declaration_reads_is_required_and_named_by_its_field():
    demo = contracts.contracts_for(demo_policy())
    assert demo["events"].named_by["event_type"].startswith("features.aggregates.")
    assert demo["subjects"].named_by["region"] == "features.categorical"
    assert demo["subjects"].named_by["converted"] == "models.model.label"
    assert demo["tickets"].texts == ("text",) and demo["tickets"].timestamps == ("created_at",)
    assert set(demo["events"].required) >= {"event_id", "subject_id", "ts", "event_type"}
