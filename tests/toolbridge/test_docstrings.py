"""Tool descriptions and parameter descriptions from docstrings (griffe; no engine)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import griffe
import pytest
from pydantic import Field

from toolbridge import IdempotencyKey, Tool, as_tool, tool
from toolbridge._docstrings import ParsedDocstring, parse_docstring


def _descriptions(t: Tool) -> dict[str, Any]:
    return {name: prop.get("description") for name, prop in t.parameters["properties"].items()}


def google_style(city: str, days: int = 3) -> str:
    """Forecast the weather for a city.

    Uses the nearest station; falls back to
    the regional model.

    Args:
        city (str): Name of the city,
            as in an atlas.
        days: How many days ahead.

    Returns:
        str: the forecast.

    Raises:
        ValueError: an unknown city.
    """
    return f"{city}: sunny for {days} days"


def numpy_style(city: str, days: int = 3) -> str:
    """Forecast the weather for a city.

    Parameters
    ----------
    city : str
        Name of the city.
    days : int, optional
        How many days ahead.

    Returns
    -------
    str
        The forecast.
    """
    return city


def sphinx_style(city: str, days: int = 3) -> str:
    """Forecast the weather for a city.

    :param city: Name of the city.
    :type city: str
    :param int days: How many days ahead.
    :returns: the forecast.
    :rtype: str
    """
    return city


@pytest.mark.parametrize("fn", [google_style, numpy_style, sphinx_style], ids=["google", "numpy", "sphinx"])
def test_each_style_gives_summary_and_parameters(fn: Any) -> None:
    t = Tool(fn)
    assert t.description == "Forecast the weather for a city."
    descriptions = _descriptions(t)
    assert descriptions["city"] is not None and descriptions["city"].startswith("Name of the city")
    assert descriptions["days"] == "How many days ahead."
    # The schema is otherwise what pydantic makes of the signature.
    assert t.parameters["properties"]["days"]["default"] == 3
    assert t.parameters["required"] == ["city"]


def test_google_continuation_lines_are_joined_and_sections_left_out() -> None:
    parsed = parse_docstring(google_style.__doc__)
    assert parsed.parameters == {"city": "Name of the city, as in an atlas.", "days": "How many days ahead."}
    assert parsed.summary == "Forecast the weather for a city."
    assert parsed.description == (
        "Forecast the weather for a city.\n\nUses the nearest station; falls back to the regional model."
    )
    for section_text in ("Args", "Returns", "Raises", "the forecast", "unknown city"):
        assert section_text not in parsed.description


def test_tool_description_is_the_summary_without_the_args_section() -> None:
    t = Tool(google_style)
    assert t.description == "Forecast the weather for a city."
    schema = t.openai_schema()["function"]
    assert "Args" not in schema["description"] and "atlas" not in schema["description"]


class MathTools:
    """A small calculator whose methods are tools (shaped like BFCL's math API)."""

    def logarithm(self, value: float, base: float, precision: int) -> dict[str, float]:
        """Compute the logarithm of a number in a given base.

        Args:
            value (float): The number to take the logarithm of.
            base (float): The base of the logarithm.
            precision (int): Digits after the decimal point of the result.

        Returns:
            result (float): The logarithm of value in base.
        """
        import math

        return {"result": round(math.log(value, base), precision)}

    def mean(self, numbers: list[float]) -> dict[str, float]:
        """Average of a list of numbers.

        Args:
            numbers (List[float]): The numbers to average.

        Returns:
            result (float): Their arithmetic mean.
        """
        return {"result": sum(numbers) / len(numbers)}

    def square_root(self, number: float, precision: int = 2) -> dict[str, float]:
        """Square root of a number.

        Args:
            number (float): A non-negative number.
        """
        return {"result": round(number**0.5, precision)}


def test_bound_methods_become_tools_with_parameter_descriptions() -> None:
    calc = MathTools()
    log = tool(calc.logarithm)
    assert log.name == "logarithm"
    assert log.description == "Compute the logarithm of a number in a given base."
    assert "self" not in log.parameters["properties"]
    assert _descriptions(log) == {
        "value": "The number to take the logarithm of.",
        "base": "The base of the logarithm.",
        "precision": "Digits after the decimal point of the result.",
    }
    assert log.parameters["required"] == ["value", "base", "precision"]
    assert log.validate({"value": 8, "base": 2, "precision": 3}) == {"value": 8.0, "base": 2.0, "precision": 3}
    assert log.fn(**log.validate({"value": 8, "base": 2, "precision": 3})) == {"result": 3.0}

    mean = Tool(calc.mean)
    assert mean.parameters["properties"]["numbers"] == {
        "type": "array",
        "items": {"type": "number"},
        "description": "The numbers to average.",
    }
    # as_tool (what a workflow's tools=[...] goes through) takes the same path.
    assert _descriptions(as_tool(calc.square_root)) == {"number": "A non-negative number.", "precision": None}


def test_field_description_wins_over_the_docstring() -> None:
    def search(
        query: Annotated[str, Field(description="from the annotation", max_length=100)],
        limit: int = 10,
    ) -> list[str]:
        """Search the catalogue.

        Args:
            query: from the docstring.
            limit: At most this many hits.
        """
        return []

    t = Tool(search)
    assert t.parameters["properties"]["query"] == {
        "type": "string",
        "maxLength": 100,
        "description": "from the annotation",
    }
    assert t.parameters["properties"]["limit"]["description"] == "At most this many hits."


def test_undocumented_and_unknown_parameters() -> None:
    def lookup(key: str, idempotency_key: IdempotencyKey, verbose: bool = False) -> str:
        """Look a key up.

        Args:
            key: The key to look up.
            idempotency_key: Never shown to the model.
            colour: A parameter that no longer exists.
        """
        return key

    t = Tool(lookup)
    assert set(t.parameters["properties"]) == {"key", "verbose"}
    assert _descriptions(t) == {"key": "The key to look up.", "verbose": None}
    assert "description" not in t.parameters["properties"]["verbose"]
    assert "colour" not in str(t.parameters) and "Never shown" not in str(t.parameters)


def test_explicit_description_still_gets_parameter_descriptions() -> None:
    t = Tool(google_style, description="Weather.")
    assert t.description == "Weather."
    assert _descriptions(t)["days"] == "How many days ahead."


def test_plain_and_missing_docstrings_keep_the_first_paragraph() -> None:
    def plain(a: int) -> int:
        """Double a number,
        quickly.

        More text that is not shown to the model.
        """
        return 2 * a

    def bare(a: int) -> int:
        return a

    assert Tool(plain).description == "Double a number, quickly."
    assert _descriptions(Tool(plain)) == {"a": None}
    assert Tool(bare).description == ""
    assert parse_docstring(None) == parse_docstring("   ") == ParsedDocstring()


def test_malformed_docstring_does_not_break_the_tool() -> None:
    def odd(a: int) -> int:
        """Do the odd thing.

        Args:
        a without indentation : : :
            Returns:
        ----------
        :param: :type:
        """
        return a

    t = Tool(odd)
    assert t.description == "Do the odd thing."
    assert t.parameters["properties"]["a"]["type"] == "integer"


def test_a_docstring_griffe_fails_on_falls_back_to_the_first_paragraph(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: griffe.Docstring, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("griffe cannot read this")

    monkeypatch.setattr(griffe.Docstring, "parse", explode)
    parsed = parse_docstring(google_style.__doc__)
    assert parsed.summary == "Forecast the weather for a city."
    assert parsed.parameters == {}
    t = Tool(google_style)
    assert t.description == "Forecast the weather for a city."
    assert _descriptions(t) == {"city": None, "days": None}


def _griffe_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("griffe")]


def test_griffe_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    def untyped_docs(a: int, b: int) -> int:
        """Add.

        Args:
            a: first.
            b: second.

        Returns:
            the sum.
        """
        return a + b

    caplog.set_level(logging.DEBUG)
    Tool(untyped_docs)
    Tool(MathTools().logarithm)
    assert _griffe_records(caplog) == []


def test_griffe_logs_nothing_even_when_asked_to_warn(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A griffe without the ``warnings`` option warns about every missing
    # type; the log filter must hold on its own.
    real_parse = griffe.Docstring.parse

    def noisy(self: griffe.Docstring, parser: Any = None, **options: Any) -> Any:
        return real_parse(self, parser)

    monkeypatch.setattr(griffe.Docstring, "parse", noisy)
    caplog.set_level(logging.DEBUG)
    assert parse_docstring("Add.\n\nArgs:\n    a: first.\n").parameters == {"a": "first."}
    assert _griffe_records(caplog) == []
    # ... while griffe's logging outside toolbridge is left as it was.
    griffe.Docstring("Add.\n\nArgs:\n    a: first.\n").parse(griffe.Parser.google)
    assert _griffe_records(caplog) != []


def test_style_is_found_without_griffes_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    # Older griffe (before a public "auto" style) has no working detection.
    monkeypatch.delattr(griffe, "infer_docstring_style")
    for fn in (google_style, numpy_style, sphinx_style):
        assert parse_docstring(fn.__doc__).parameters["days"] == "How many days ahead."
    assert parse_docstring("Just prose.\n\nNo sections: here.").description == "Just prose.\n\nNo sections: here."
