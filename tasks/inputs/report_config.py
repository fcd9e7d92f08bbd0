"""The `[report]` section of the config: what the PDF reports say and in which language."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Lender(_Strict):
    """The lender named in the letters' header and in the rights notice."""

    name: str = Field(default="Example Bank plc", description="the lender's name")
    address: list[str] = Field(
        default_factory=lambda: ["1 Example Street", "London EC1A 1AA"], description="the lender's address, one line "
        "per item",
    )
    contact: list[str] = Field(
        default_factory=lambda: ["Telephone 0800 000 0000", "credit.review@example.co.uk"],
        description="how customers reach the lender (shown in the header and in the rights notice)",
    )
    regulator: list[str] = Field(
        default_factory=list,
        description="name and address of the authority supervising the lender (required by the 'us' notice)",
    )


class ReportConfig(_Strict):
    """Settings of the customer reports and the run summary."""

    enabled: bool = Field(default=True, description="render the PDF reports and the run summary")
    language: Literal["en", "zh-CN"] = Field(
        default="en", description="the reports' language: fixed texts from the translation catalogs"
    )
    jurisdiction: str = Field(default="uk", description="which rights notice to print: uk, eu, us, cn, ...")
    lender: Lender = Field(default_factory=Lender, description="the lender's name, address and contacts")
    title: str | None = Field(default=None, description="report title; default from the translation catalog")
    applicant_fields: list[str] = Field(
        default_factory=list, description="decision columns shown in the report header (e.g. name)"
    )
    date_column: str | None = Field(default=None, description="decision column holding the decision date")
    decision_column: str | None = Field(
        default=None,
        description="decision column holding the decision taken (a class name); default: derived from the "
        "model's probability and decision_threshold (two classes only)",
    )
    decision_threshold: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="probability of the explained class at which it is decided"
    )
    show_favourable: bool = Field(
        default=True,
        description="show the factors that lowered the explained class's probability apart, as 'in your favour' "
        "(adverse decisions only; they are never principal reasons)",
    )
    reasons: str | None = Field(
        default=None,
        description="reason catalog TOML (relative to the config file; '{language}' is replaced); "
        "default: the bundled config/reasons/<language>.toml",
    )
    notices: str | None = Field(
        default=None,
        description="rights/notice texts TOML, one table per jurisdiction (relative to the config; "
        "'{language}' is replaced); default: [notices.*] of the bundled config/texts/<language>.toml",
    )
    pdf_variant: Literal["pdf/a-3b", "pdf/a-3u", "pdf/a-3a"] = Field(
        default="pdf/a-3b", description="archival PDF variant; PDF/A-3 keeps the embedded explanation JSON"
    )
    pdf_tags: bool = Field(default=True, description="tagged PDF structure (accessibility); pdf/a-3a forces it")
    review_list_limit: int = Field(
        default=500, ge=0, description="decisions listed by id in the run summary's review list (at most 20, the "
        "most severe; the full list is review.parquet; runs recorded before that listed this many in run order)"
    )
    layout: Literal["flat", "date", "hash-prefix"] = Field(
        default="flat",
        description="where the reports go in OUT/reports/: 'flat' (one folder), 'date' (a subfolder per decision "
        "date, YYYY-MM-DD, from date_column) or 'hash-prefix' (256 subfolders, the first two hex digits of the "
        "SHA-256 of the decision id): a million reports are not one folder",
    )

    @model_validator(mode="after")
    def _date_layout_needs_a_date(self) -> ReportConfig:
        if self.layout == "date" and not self.date_column:
            raise ValueError("layout = 'date' needs date_column (the decision column that dates each report)")
        return self
