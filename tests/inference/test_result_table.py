"""ResultTable: a DataFrame that prints as R prints the same table.

The R texts in ``data/result_tables/*.txt`` are R 4.2.2's own printing (``print.anova`` of
lmerTest's and lme4's tables, emmeans' ``print.summary_emm``, ``print.data.frame``) of the
shared references' tables (``data/reference/extras``); ``make_texts.R`` there made them, with
R's ``format``, ``format.pval`` and ``zapsmall`` on 400 random vectors
(``r_format_cases.json``).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn._table import (ResultTable, format_pval, format_real, legend_lines,
                                    signif_codes, zapsmall)

DATA = Path(__file__).resolve().parents[1] / "data"
TEXTS = DATA / "result_tables"

ANOVA = {"NumDF": "int", "DenDF": "df", "F value": "stat", "Pr(>F)": "p"}
RANOVA = {"npar": "int", "Df": "int", "Pr(>Chisq)": "p"}
MODELS = {"npar": "int", "Df": "int", "Chisq": "stat", "Pr(>Chisq)": "p"}


def r_text(name: str) -> str:
    return (TEXTS / f"{name}.txt").read_text(encoding="utf-8").removesuffix("\n")


def extras(name: str) -> dict:
    return json.loads((DATA / "reference" / "extras" / f"{name}.json").read_text())


def _column(values) -> list:
    values = values if isinstance(values, list) else [values]
    return [np.nan if v == "NA" else v for v in values]


def reference_table(reference: str, key: str, rows: list[str] | None = None, **meta) -> ResultTable:
    """A table of a shared reference as a ResultTable (R's JSON: "NA" for missing)."""
    entry = extras(reference)[key]
    index = rows or _column(entry["rows"])
    data = {k: _column(v) for k, v in entry.items() if k != "rows"}
    return ResultTable(data, index=index, **meta)


ORTHODONT = "orthodont_agesex_slopes_reml"
TYPE3 = "Type III Analysis of Variance Table with Satterthwaite's method"


def type3() -> ResultTable:
    return reference_table(ORTHODONT, "anova_type3_satterthwaite", title=TYPE3, formats=ANOVA,
                           stars="Pr(>F)")


def ranova_title(formula: str) -> str:
    return f"ANOVA-like table for random-effects: Single term deletions\n\nModel:\n{formula}"


CASES = {
    "orthodont_anova_type3": (type3, 80),
    "orthodont_anova_type3_two_rows": (lambda: type3().loc[["age", "Sex"]], 80),
    "orthodont_anova_type3_width40": (type3, 40),
    "orthodont_anova_type3_width58": (type3, 58),  # the codes alone in a second block
    "orthodont_anova_type1": (lambda: reference_table(
        ORTHODONT, "anova_type1_satterthwaite", formats=ANOVA, stars="Pr(>F)",
        title="Type I Analysis of Variance Table with Satterthwaite's method"), 80),
    "orthodont_anova_type3_kr": (lambda: reference_table(
        ORTHODONT, "anova_type3_kenward_roger", formats=ANOVA, stars="Pr(>F)",
        title="Type III Analysis of Variance Table with Kenward-Roger's method"), 80),
    "orthodont_ranova": (lambda: reference_table(
        ORTHODONT, "ranova", formats=RANOVA, stars="Pr(>Chisq)",
        title=ranova_title("distance ~ age + Sex + (age | Subject) + age:Sex")), 80),
    "orthodont_drop1": (lambda: reference_table(
        ORTHODONT, "drop1", rows=["age:Sex"], formats=ANOVA, stars="Pr(>F)",
        title="Single term deletions using Satterthwaite's method:\n\nModel:\n"
              "distance ~ age * Sex + (age | Subject)"), 80),
    "penicillin_ranova": (lambda: reference_table(
        "penicillin_crossed_kr", "ranova", formats=RANOVA, stars="Pr(>Chisq)",
        title=ranova_title("diameter ~ (1 | plate) + (1 | sample)")), 80),
    "sleepstudy_models": (lambda: reference_table(
        "sleepstudy_model_sequence", "anova", formats=MODELS, stars="Pr(>Chisq)",
        title="Data: sleepstudy\nModels:\nm0: Reaction ~ 1 + (Days | Subject)\n"
              "m1: Reaction ~ Days + (Days | Subject)\n"
              "m2: Reaction ~ Days + I(Days^2) + (Days | Subject)"), 80),
    "orthodont_emmeans_sex": (lambda: ResultTable(
        {k: _column(v) for k, v in extras(ORTHODONT)["emmeans_sex"].items()},
        formats={"df": "df"}, layout="emmeans",
        notes=["Degrees-of-freedom method: kenward-roger", "Confidence level used: 0.95"]), 80),
    "orthodont_emmeans_pairs": (lambda: ResultTable(
        {k: _column(v) for k, v in extras(ORTHODONT)["emmeans_sex_pairs"].items()},
        formats={"df": "df", "t.ratio": "stat", "p.value": "p.emmeans"}, layout="emmeans",
        notes=["Degrees-of-freedom method: kenward-roger"]), 80),
    "sleepstudy_aic_frame": (lambda: ResultTable(
        {"df": [5, 6, 7, np.nan],
         "AIC": _column(extras("sleepstudy_model_sequence")["anova"]["AIC"]) + [np.nan]},
        index=["m0", "m1", "m2", "m3"], formats={"df": "int"}, layout="frame"), 80),
    "synthetic_anova": (lambda: ResultTable(
        {"Estimate": [-1234567.5, 0.000123, np.nan, 2.5], "Df": [1, 2, np.nan, 40],
         "Chisq": [1e-6, 12.3456789, np.nan, np.inf], "Pr(>Chisq)": [0.99, 1e-300, np.nan, 0.0999]},
        index=["a", "bb", "ccc", "dddd"], formats=MODELS, stars="Pr(>Chisq)",
        title="A synthetic table\n\nwith a two-line heading"), 80),
    "synthetic_emmeans": (lambda: ResultTable(
        {"contrast": ["a - b", "a - c", "b - c long label"], "estimate": [0.00123456, 12.3456, np.nan],
         "SE": [0.0001, 0.5, 1.2], "df": [10.456, 1234.5, np.inf], "t.ratio": [12.3456, 24.6912, -2.675],
         "p.value": [0.00003, 0.00007, 0.51234]},
        formats={"df": "df", "t.ratio": "stat", "p.value": "p.emmeans"}, layout="emmeans",
        notes=["P value adjustment: tukey method for comparing a family of 3 estimates"]), 80),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_prints_as_r_prints_the_table(name):
    make, width = CASES[name]
    assert make().text(width=width) == r_text(name)


def test_print_uses_the_terminal_width(monkeypatch):
    table = type3()
    monkeypatch.setenv("COLUMNS", "40")
    assert str(table) == r_text("orthodont_anova_type3_width40")
    assert repr(table) == str(table)
    monkeypatch.setenv("COLUMNS", "80")
    assert str(table) == r_text("orthodont_anova_type3")


def test_wide_tables_are_cut_between_columns_only():
    table = type3()
    for width in (20, 30, 45, 58):
        lines = table.text(width=width).split("\n")
        block_lines = lines[1:lines.index("---")]  # between the title and the legend
        headers = [line for line in block_lines if line.startswith(" " * 8)]
        # every column header appears exactly once, whole, and every block repeats the rows
        for column in ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]:  # whole
            assert sum(column in line for line in headers) == 1
        assert sum(line.startswith("age:Sex ") for line in block_lines) == len(headers) > 1
        # a block stays below the width unless it holds a single column (R's rule)
        for line in block_lines:
            assert len(line) < width or len(line[8:].split()) <= 2


def _numbers(values) -> np.ndarray:
    values = values if isinstance(values, list) else [values]
    return np.array([np.nan if v == "NA" else float(v) for v in values])


def test_number_formatting_agrees_with_r():
    cases = json.loads((TEXTS / "r_format_cases.json").read_text())
    assert len(cases) == 400
    for case in cases:
        x, digits = _numbers(case["x"]), case["digits"]
        expected = case["format"] if isinstance(case["format"], list) else [case["format"]]
        assert format_real(x, digits) == expected, (case["x"], digits)
        np.testing.assert_array_equal(zapsmall(x, digits), _numbers(case["zapsmall"]))
        expected = case["format_pval"] if isinstance(case["format_pval"], list) else [case["format_pval"]]
        assert format_pval(_numbers(case["p"]), digits) == expected, (case["p"], digits)


def test_signif_codes_and_legend_as_r():
    # R: symnum(p, corr = FALSE, na = FALSE, cutpoints = c(0, .001, .01, .05, .1, 1), ...)
    p = [0, 0.001, 0.0010001, 0.01, 0.05, 0.1, 0.5, 1, np.nan]
    assert signif_codes(p) == ["***", "***", "**", "**", "*", ".", " ", " ", ""]
    legend = "0 \u2018***\u2019 0.001 \u2018**\u2019 0.01 \u2018*\u2019 0.05 \u2018.\u2019 0.1 \u2018 \u2019 1"
    # R 4.2.2, options(width = w) before print(); the legend's wrapping counts bytes
    assert legend_lines(80) == ["---", "Signif. codes:  " + legend]
    assert legend_lines(62) == ["---", "Signif. codes:  " + legend]
    assert legend_lines(61) == ["---", "Signif. codes:  ", legend]
    assert legend_lines(40) == ["---", "Signif. codes:  ", "  0 \u2018***\u2019 0.001 \u2018**\u2019 0.01 "
                                "\u2018*\u2019 0.05", "  \u2018.\u2019 0.1 \u2018 \u2019 1"]
    assert legend_lines(30) == ["---", "Signif. codes:  ", "  0 \u2018***\u2019 0.001 \u2018**\u2019 0.01",
                                "  \u2018*\u2019 0.05 \u2018.\u2019 0.1 \u2018 \u2019 1"]


def test_no_codes_without_a_p_value_below_one_tenth():
    table = type3()
    table.loc[:, "Pr(>F)"] = [0.2, 0.5, 0.9]
    text = table.text(width=80)
    assert "Signif" not in text and "*" not in text
    assert text.split("\n")[1].endswith("Pr(>F)")


def _meta(table) -> tuple:
    return table.title, table.notes, table.formats, table.stars, table.layout


def test_selections_keep_title_notes_and_formats():
    table = type3()
    table.notes = ("a note",)
    selections = [table.loc[["age", "Sex"]], table.iloc[1:], table[["F value", "Pr(>F)"]],
                  table.loc[:, "Sum Sq":"DenDF"], table.round(4), table.copy(),
                  table.sort_values("F value"), table.head(1), table[table["F value"] > 1]]
    for selected in selections:
        assert isinstance(selected, ResultTable)
        assert _meta(selected) == _meta(table)
    # the selection prints as R prints those rows (format.pval of 0.52355 alone: 0.5235)
    table.notes = ()
    assert table.loc[["age", "Sex"]].text(width=80) == r_text("orthodont_anova_type3_two_rows")
    rounded = table.round(4)
    assert rounded.loc["age", "F value"] == round(table.loc["age", "F value"], 4)
    assert isinstance(table["F value"], pd.Series) and not isinstance(table["F value"], ResultTable)
    assert table.loc["age", "DenDF"] == pytest.approx(25.0113, abs=1e-4)


def test_selections_do_not_share_formats():
    table = type3()
    part = table.loc[["age"]]
    part.formats["F value"] = "num"
    assert table.formats["F value"] == "stat"


def test_concat_takes_the_first_tables_metadata():
    table = type3()
    joined = pd.concat([table.loc[["age"]], table.loc[["Sex", "age:Sex"]]])
    assert isinstance(joined, ResultTable)
    assert _meta(joined) == _meta(table)
    assert joined.text(width=80) == r_text("orthodont_anova_type3")


def test_pickle_round_trip():
    table = type3()
    table.notes = ("note one", "note two")
    copy = pickle.loads(pickle.dumps(table))
    assert isinstance(copy, ResultTable)
    assert _meta(copy) == _meta(table)
    pd.testing.assert_frame_equal(copy.frame(), table.frame())
    assert copy.text(width=80) == table.text(width=80)


def test_plain_dataframe_on_request():
    table = type3()
    for plain in (pd.DataFrame(table), table.frame()):
        assert type(plain) is pd.DataFrame
        assert "Signif" not in repr(plain)
        np.testing.assert_array_equal(plain.to_numpy(), table.to_numpy())
    copy = table.frame()
    copy.loc["age", "F value"] = 0.0
    assert table.loc["age", "F value"] > 80  # frame() is a copy


def test_html_shows_title_table_codes_and_notes():
    table = reference_table(ORTHODONT, "ranova", formats=RANOVA, stars="Pr(>Chisq)",
                            title=ranova_title("distance ~ age * Sex + (age | Subject)"))
    table.loc["age in (age | Subject)", "Pr(>Chisq)"] = 0.0123
    table.notes = ("Results <may> mislead",)
    page = table._repr_html_()
    assert "ANOVA-like table for random-effects" in page and "<table" in page
    assert "&lt;none&gt;" in page and "Results &lt;may&gt; mislead" in page
    assert ">-216.29<" in page and ">0.0123<" in page and ">*<" in page
    assert "Signif. codes" in page
    assert "<td" in page and "NA" not in page  # missing values are blank in R's anova tables
    emm = CASES["orthodont_emmeans_pairs"][0]()
    page = emm._repr_html_()
    assert ">0.0054<" in page and ">3.048<" in page and "kenward-roger" in page


def test_missing_values_per_layout():
    data = {"x": [1.5, np.nan], "p": [0.5, np.nan], "label": ["a", None]}
    formats = {"p": "p", "label": "text"}
    anova = ResultTable(data, index=["r1", "r2"], formats=formats).text(width=80).split("\n")
    frame = ResultTable(data, index=["r1", "r2"], formats=formats, layout="frame").text(width=80).split("\n")
    assert anova[2].split() == ["r2"]
    assert frame[2].split() == ["r2", "NA", "NA", "NA"]


def test_bad_metadata_is_refused():
    with pytest.raises(ValueError, match="unknown column formats"):
        ResultTable({"a": [1.0]}, formats={"a": "percent"})
    with pytest.raises(ValueError, match="layout must be one of"):
        ResultTable({"a": [1.0]}, layout="latex")


def test_docstring_examples():
    import doctest

    import mixedlm_sklearn._table as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_headings_print_but_columns_keep_their_names():
    t = ResultTable({"lower": [1.0, 2.0], "upper": [3.0, 4.0]}, index=["a", "b"],
                    headings={"lower": "2.5 %", "upper": "97.5 %"}, layout="frame")
    assert str(t).split("\n")[0].split() == ["2.5", "%", "97.5", "%"]
    assert list(t.columns) == ["lower", "upper"]
    for derived in (t.loc[["a"]], t.round(1), t.copy(), pd.concat([t, t])):
        assert derived.headings == t.headings
        assert "97.5 %" in str(derived)
    assert "2.5 %" not in str(t.frame())
