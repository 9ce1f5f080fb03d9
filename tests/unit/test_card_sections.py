"""The card's sections are typed, and a card written before they were reads and writes back
byte for byte."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from securetrain.bundle import ModelCard
from securetrain.bundle.card import (
    FederatedTrainingSection,
    MetricsSection,
    ScreeningSection,
    SigningSection,
    SplitSection,
    TrainingSection,
)

CARDS = Path(__file__).parent.parent / "fixtures" / "cards"


def _written(card: ModelCard) -> str:
    """The bundle writer's encoding (``bundle.io.write_bundle``)."""
    return json.dumps(card.model_dump(mode="json"), indent=2) + "\n"


def _federated(doc: dict) -> dict:
    """A card shaped as federated.card writes one: local training, no held-out data."""
    doc["privacy"]["mechanism"] = "federated-dp-sgd"
    doc["training"] = {
        "model": "logreg",
        "lr": 0.3,
        "max_grad_norm": 0.2,
        "local_epochs": 1,
        "optimizer": "sgd-momentum",
    }
    doc["data"]["split"] = {"method": "none: each site trains on all its rows"}
    doc["data"]["screening"] = None
    doc["metrics"] = {"note": "the server holds no data"}
    doc["federated"] = {"framework": "flower", "mode": "deployment", "sites": 3}
    return doc


@pytest.mark.parametrize("name", ["dp-sgd.json", "no-dp-signed.json"])
def test_a_written_card_round_trips_byte_for_byte(name: str) -> None:
    text = (CARDS / name).read_text()
    card = ModelCard.model_validate_json(text)
    assert _written(card) == text
    assert isinstance(card.data.split, SplitSection)
    assert isinstance(card.data.screening, ScreeningSection)
    assert isinstance(card.training, TrainingSection)
    assert isinstance(card.metrics, MetricsSection)


def test_the_sections_read_as_typed_values() -> None:
    dp = ModelCard.model_validate_json((CARDS / "dp-sgd.json").read_text())
    assert dp.data.split.seed == "card-fixture" and dp.data.split.test_fraction == 0.3
    assert dp.metrics.histogram_bins == 2 and dp.metrics.test_auc_ci95 == [0.0, 1.0]
    assert dp.signing is None
    baseline = ModelCard.model_validate_json((CARDS / "no-dp-signed.json").read_text())
    assert baseline.data.screening is not None and baseline.data.screening.mode == "drop"
    assert isinstance(baseline.signing, SigningSection)
    assert baseline.signing.signature_file == "model.sig"
    assert baseline.metrics.histogram_bins is None
    assert "histogram_bins" not in _written(baseline)


def test_a_federated_card_round_trips_with_its_own_training_section() -> None:
    text = json.dumps(_federated(json.loads((CARDS / "dp-sgd.json").read_text())), indent=2)
    card = ModelCard.model_validate_json(text)
    assert isinstance(card.training, FederatedTrainingSection)
    assert _written(card) == text + "\n"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("metrics", "test_f1", 0.9), ("training", "momentum", 0.9), ("signing", "extra", "x")],
)
def test_an_unknown_key_in_a_section_is_refused(section: str, key: str, value) -> None:
    doc = json.loads((CARDS / "no-dp-signed.json").read_text())
    doc[section][key] = value
    with pytest.raises(ValidationError):
        ModelCard.model_validate(doc)
