"""Model cards (``card`` in profiles/models/*.yaml): optional, validated, a source per fact."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from profiles.languages import LANGUAGES, SAMPLES, check_language
from profiles.errors import ProfileError
from profiles.registry import all_models, get_model
from profiles.schema import ModelCard, ModelProfile

NAMES = {m.name for m in all_models()}


@pytest.mark.parametrize("m", [m for m in all_models() if m.card is not None], ids=lambda m: m.name)
def test_card_facts_have_sources(m):
    card = m.card
    for fact, url in card.sources.items():
        assert url.startswith("https://"), (fact, url)
    assert set(card.unverified) <= set(card.sources)
    if card.superseded_by:
        assert card.superseded_by in NAMES and card.superseded_by != m.name
        newer = get_model(card.superseded_by).card
        assert newer.release_date > card.release_date  # a successor is newer


def test_every_shipped_model_has_a_card():
    # another helper may add models without one; plan select lists those as skipped
    shipped = [m for m in all_models() if m.card is None]
    assert len(shipped) < len(all_models())


def _card(**kw):
    base = dict(license="apache-2.0", license_url="https://www.apache.org/licenses/LICENSE-2.0", commercial="open",
                languages=["en"], release_date="2024-01-02",
                sources={k: "https://example.org/card" for k in ("license", "commercial", "languages", "release_date")})
    base.update(kw)
    return base


def test_card_is_optional_and_validated():
    data = get_model("qwen2.5-0.5b").model_dump()
    data["card"] = None
    assert ModelProfile.model_validate(data).card is None  # additive: profiles without a card still validate
    ModelCard.model_validate(_card())
    with pytest.raises(ValidationError, match="without a source: training_tokens"):
        ModelCard.model_validate(_card(training_tokens=1e12))
    with pytest.raises(ValidationError, match="unknown language"):
        ModelCard.model_validate(_card(languages=["xx"]))
    with pytest.raises(ValidationError, match="YYYY-MM-DD"):
        ModelCard.model_validate(_card(release_date="May 2024"))
    with pytest.raises(ValidationError):
        ModelCard.model_validate(_card(commercial="maybe"))


def test_languages():
    assert check_language("ZH") == "zh" and check_language("German") == "de"
    with pytest.raises(ProfileError, match="did you mean 'zh'"):
        check_language("zz")
    assert set(SAMPLES) <= set(LANGUAGES)
