"""Keygen's Grafana dashboard, built with grafana-foundation-sdk from the metrics that
docs/monitoring.md lists (the contract): the same figures as ``GET /dashboard``, per instance.

    .venv/bin/python deploy/grafana/dashboard.py          # rewrite keygen-dashboard.json
    .venv/bin/python deploy/grafana/dashboard.py --check  # exit 1 if the checked-in file differs

Every panel queries the ``$datasource`` variable (a Prometheus data source; Compose
provisions one and makes it the default) and every selector carries ``instance=~"$instance"``,
so one dashboard serves one instance or a fleet. tests/deploy/test_grafana.py checks that the
checked-in JSON is this script's output and that it names only the documented metrics.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

OUTPUT = Path(__file__).with_name("keygen-dashboard.json")
UID = "keygen"
#: The rate window: Grafana makes it at least four scrape intervals (1m at Compose's 15s) and
#: widens it with the graph's step, so zooming out to days never skips samples.
RATE = "$__rate_interval"
#: Counters of rare events (failovers, breaker changes) shown as "in the last 5 minutes", the
#: window of the KeygenRedisFailover alert.
RECENT = "5m"
INSTANCE = 'instance=~"$instance"'
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
#: 2^63 - 1, the ledger's ceiling (``keygen_ledger_headroom_ids`` counts the IDs below it).
ID_SPACE = 9223372036854775807

#: (PromQL, legend) for one query of a panel.
Query = tuple[str, str]


def selector(metric: str, **matchers: str) -> str:
    """``metric{label="value", ..., instance=~"$instance"}``."""
    labels = [f'{name}="{value}"' for name, value in matchers.items()]
    return f"{metric}{{{', '.join([*labels, INSTANCE])}}}"


def rate(metric: str, window: str = RATE, **matchers: str) -> str:
    return f"rate({selector(metric, **matchers)}[{window}])"


def increase(metric: str, window: str = RECENT, **matchers: str) -> str:
    return f"increase({selector(metric, **matchers)}[{window}])"


def quantile(q: float, histogram: str, *by: str) -> str:
    """The ``q`` quantile of a histogram over the selected instances, per ``by`` labels."""
    labels = ", ".join(["le", *by])
    return f"histogram_quantile({q}, sum by ({labels}) ({rate(f'{histogram}_bucket')}))"


def error_ratio() -> str:
    """The share of allocation requests that failed with a 5xx, of those that were not a
    client's refusal (4xx), as the KeygenErrorRateHigh alert: 0 while no failure was ever
    counted (the series appears with the first one), nothing while there is no traffic."""
    failed, every = (
        f'rate(keygen_http_responses_total{{endpoint="/allocate", status{status}, {INSTANCE}}}'
        f"[{RATE}])"
        for status in ('=~"5.."', '!~"4.."')
    )
    return f"(sum({failed}) or vector(0)) / (sum({every}) > 0)"


def _thresholds(*steps: tuple[float | None, str]) -> builders.ThresholdsConfig:
    return (
        builders.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


def _mapping(*values: tuple[int, str, str]) -> list[models.ValueMapping]:
    """Value mappings ``value -> (text, colour)`` for 0/1 gauges."""
    options = {
        str(value): models.ValueMappingResult(text=text, color=color, index=index)
        for index, (value, text, color) in enumerate(values)
    }
    return [models.ValueMap(options=options)]


def _queries(queries: Sequence[Query]) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    return [
        prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + index))
        for index, (expr, legend) in enumerate(queries)
    ]


def _legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def graph(
    title: str,
    description: str,
    unit: str,
    *queries: Query,
    width: int = 12,
    limit: float | None = None,
    bars: bool = False,
) -> timeseries.Panel:
    """A time series panel; ``limit`` draws an alert's threshold as a dashed red line."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_queries(queries))
        .unit(unit)
        .min(0)
        .height(8)
        .span(width)
        .legend(_legend())
        .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI))
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
    )
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    if limit is not None:
        panel = panel.thresholds(_thresholds((None, "green"), (limit, "red"))).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.DASHED)
        )
    return panel


def figure(
    title: str,
    description: str,
    unit: str,
    expr: str,
    *,
    legend: str = "",
    red_from: float | None = None,
    mappings: list[models.ValueMapping] | None = None,
    no_value: str = "0",
) -> stat.Panel:
    """A single figure, the last value, red from ``red_from`` on."""
    steps: list[tuple[float | None, str]] = [(None, "green")]
    if red_from is not None:
        steps.append((red_from, "red"))
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_queries([(expr, legend)]))
        .unit(unit)
        .height(4)
        .span(4)
        .thresholds(_thresholds(*steps))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .no_value(no_value)
    )
    if mappings is not None:
        panel = panel.mappings(mappings).graph_mode(common.BigValueGraphMode.NONE)
    return panel


def states(
    title: str,
    description: str,
    expr: str,
    legend: str,
    mappings: list[models.ValueMapping],
    *,
    width: int = 12,
) -> statetimeline.Panel:
    """A state timeline of a 0/1 gauge, one lane per series."""
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_queries([(expr, legend)]))
        .mappings(mappings)
        .thresholds(_thresholds((None, "text")))
        .color_scheme(builders.FieldColor().mode(models.FieldColorModeId.THRESHOLDS))
        .height(8)
        .span(width)
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .fill_opacity(80)
        .legend(_legend())
    )


UP_DOWN = _mapping((1, "up", "green"), (0, "down", "red"))
RESERVE = _mapping((0, "not serving", "green"), (1, "serving", "orange"))
QUORUM = _mapping((1, "quorum", "green"), (0, "no quorum", "red"))


def overview() -> list[stat.Panel]:
    return [
        figure(
            "Allocations",
            "Successful allocation requests per second, all selected instances.",
            "reqps",
            f"sum({rate('keygen_allocations_total', outcome='success')})",
        ),
        figure(
            "Error rate",
            "Share of allocation requests that failed with a 5xx (KeygenErrorRateHigh above 1 %).",
            "percentunit",
            error_ratio(),
            red_from=0.01,
            no_value="no traffic",
        ),
        figure(
            "Latency p95",
            "95th percentile of POST /allocate (KeygenLatencyHigh above 10 ms).",
            "s",
            quantile(0.95, "keygen_allocation_duration_seconds"),
            red_from=0.010,
        ),
        figure(
            "Layers down",
            "Configured layers failing their background probe, counted per instance.",
            "none",
            f"count({selector('keygen_layer_up')} == 0) or vector(0)",
            red_from=1,
        ),
        figure(
            "Emergency reserve",
            "Whether any selected instance serves from its emergency reserve.",
            "none",
            f"max({selector('keygen_reserve_serving')})",
            mappings=RESERVE,
            no_value="no reserve",
        ),
        figure(
            "Sentinel quorum",
            "Whether the Sentinels could fail the Redis master over (Redis mode only).",
            "none",
            f"min({selector('keygen_redis_sentinel_quorum')})",
            mappings=QUORUM,
            no_value="no Redis",
        ),
    ]


def allocations() -> list[timeseries.Panel]:
    return [
        graph(
            "Allocation rate by source",
            "Successful allocations per second by the layer that served them.",
            "reqps",
            (
                f"sum by (source) ({rate('keygen_allocations_total', outcome='success')})",
                "{{source}}",
            ),
        ),
        graph(
            "IDs allocated",
            "IDs handed out per second, per instance.",
            "short",
            (f"sum by (instance) ({rate('keygen_ids_allocated_total')})", "{{instance}}"),
        ),
        graph(
            "Allocation latency",
            "Time to serve POST /allocate, failures included; the line is KeygenLatencyHigh's.",
            "s",
            *[
                (quantile(q, "keygen_allocation_duration_seconds"), f"p{round(q * 100)}")
                for q in (0.5, 0.95, 0.99)
            ],
            limit=0.010,
        ),
        graph(
            "Allocation error rate",
            "Share of allocation requests that failed with a 5xx; the line is "
            "KeygenErrorRateHigh's 1 %.",
            "percentunit",
            (error_ratio(), "errors"),
            limit=0.01,
        ),
    ]


def layers() -> list[timeseries.Panel | statetimeline.Panel]:
    return [
        states(
            "Layer up",
            "Each configured layer's background probe, per instance: a dead layer shows "
            "without traffic.",
            selector("keygen_layer_up"),
            "{{instance}} {{source}}",
            UP_DOWN,
            width=8,
        ),
        graph(
            "Open breakers",
            "Worker processes whose breaker for the layer is open or half-open.",
            "none",
            (selector("keygen_breaker_open"), "{{instance}} {{source}}"),
            width=8,
        ),
        graph(
            "Breaker transitions (5m)",
            "Breaker state changes in the last 5 minutes, by layer and new state.",
            "none",
            (
                f"sum by (source, to) ({increase('keygen_breaker_transitions_total')})",
                "{{source}} {{to}}",
            ),
            width=8,
            bars=True,
        ),
    ]


def redis() -> list[timeseries.Panel | statetimeline.Panel]:
    return [
        graph(
            "Redis failovers (5m)",
            "Master failovers announced by Sentinel in the last 5 minutes (KeygenRedisFailover); "
            "every instance sees each one, so this is the most any instance saw.",
            "none",
            (f"max({increase('keygen_redis_failovers_total')})", "failovers"),
            width=8,
            bars=True,
        ),
        states(
            "Sentinel quorum",
            "1 while the Sentinels could fail the master over, per instance.",
            selector("keygen_redis_sentinel_quorum"),
            "{{instance}}",
            QUORUM,
            width=8,
        ),
        graph(
            "Active locks",
            "Distributed locks held (lease refills in Redis mode); the line is "
            "KeygenTooManyLocks'.",
            "none",
            (selector("keygen_active_locks"), "{{instance}}"),
            width=8,
            limit=10,
        ),
    ]


def leases() -> list[timeseries.Panel]:
    return [
        graph(
            "Lease refills",
            "Leases taken from the ledger per minute, by the layer that took them.",
            "opm",
            (f"60 * sum by (source) ({rate('keygen_lease_refills_total')})", "{{source}}"),
            width=8,
        ),
        graph(
            "Lease refill duration",
            "Time a refill took, by layer.",
            "s",
            *[
                (
                    quantile(q, "keygen_lease_refill_duration_seconds", "source"),
                    f"p{round(q * 100)} {{{{source}}}}",
                )
                for q in (0.5, 0.95, 0.99)
            ],
            width=8,
        ),
        graph(
            "IDs wasted",
            "IDs given up unused per second (lease tails, retired reserves): never handed out, "
            "never to be.",
            "short",
            (f"sum by (source) ({rate('keygen_ids_wasted_total')})", "{{source}}"),
            width=8,
        ),
    ]


def reserve() -> list[timeseries.Panel | statetimeline.Panel]:
    return [
        states(
            "Serving from the reserve",
            "1 while the instance serves requests from its emergency reserve "
            "(KeygenServingFromReserve).",
            selector("keygen_reserve_serving"),
            "{{instance}}",
            RESERVE,
        ),
        graph(
            "Reserve use",
            "IDs served from the emergency reserve per second, and reserves taken from the "
            "ledger per minute.",
            "short",
            (
                f"sum by (instance) ({rate('keygen_reserve_ids_served_total')})",
                "{{instance}} IDs/s",
            ),
            (
                f"60 * sum by (instance) ({rate('keygen_reserve_refills_total')})",
                "{{instance}} refills/min",
            ),
        ),
        graph(
            "Reserve remaining (IDs)",
            "IDs left in the emergency reserves, per namespace.",
            "short",
            (selector("keygen_reserve_remaining_ids"), "{{instance}} {{namespace}}"),
        ),
        graph(
            "Reserve remaining (time)",
            "How long the reserve lasts at the namespace's current rate (absent while nothing "
            "is served); the line is KeygenReserveLow's 10 minutes.",
            "s",
            (selector("keygen_reserve_remaining_seconds"), "{{instance}} {{namespace}}"),
            limit=600,
        ),
    ]


def ledger() -> list[timeseries.Panel]:
    headroom = f"min by (namespace) ({selector('keygen_ledger_headroom_ids')})"
    return [
        graph(
            "Ledger headroom",
            "Share of the ID space (below 2^63-1) left, for the namespaces with the least; "
            "the line is KeygenHeadroomLow's 1 %.",
            "percentunit",
            (f"{headroom} / {ID_SPACE}", "{{namespace}}"),
            limit=0.01,
        ),
        graph(
            "Ledger headroom (IDs)",
            "IDs left below 2^63-1, for the namespaces with the least.",
            "short",
            (headroom, "{{namespace}}"),
        ),
        graph(
            "Audit violations",
            "What each instance's background audit of its own grants found wrong in the "
            "ledger's trail: must stay 0 (KeygenAuditViolation fires above it).",
            "short",
            (f"sum by (instance) ({selector('keygen_audit_violations_total')})", "{{instance}}"),
        ),
    ]


def http() -> list[timeseries.Panel]:
    return [
        graph(
            "HTTP responses by status",
            "Responses per second by status code.",
            "reqps",
            (f"sum by (status) ({rate('keygen_http_responses_total')})", "{{status}}"),
            width=8,
        ),
        graph(
            "HTTP responses by endpoint",
            "Responses per second by path (a fixed list; others are 'other').",
            "reqps",
            (f"sum by (endpoint) ({rate('keygen_http_responses_total')})", "{{endpoint}}"),
            width=8,
        ),
        graph(
            "Rejected requests by code",
            "Requests refused with an error per second, by the error's code.",
            "reqps",
            (f"sum by (code) ({rate('keygen_rejected_requests_total')})", "{{code}}"),
            width=8,
        ),
    ]


def process() -> list[timeseries.Panel | stat.Panel]:
    build_info = (
        stat.Panel()
        .title("Build")
        .description("The version each instance runs, and its Python.")
        .datasource(DATASOURCE)
        .targets(
            _queries([(selector("keygen_build_info"), "{{instance}}: {{version}} ({{python}})")])
        )
        .height(8)
        .span(4)
        .text_mode(common.BigValueTextMode.NAME)
        .color_mode(common.BigValueColorMode.NONE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .orientation(common.VizOrientation.HORIZONTAL)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
    )
    return [
        build_info,
        graph(
            "Workers",
            "Worker processes of the instance that are alive.",
            "none",
            (selector("keygen_workers"), "{{instance}}"),
            width=5,
        ),
        graph(
            "CPU",
            "CPU used, summed over the instance's workers: 100 % is one core.",
            "percentunit",
            (rate("process_cpu_seconds_total"), "{{instance}}"),
            width=5,
        ),
        graph(
            "Resident memory",
            "Resident memory, summed over the instance's workers.",
            "bytes",
            (selector("process_resident_memory_bytes"), "{{instance}}"),
            width=5,
        ),
        graph(
            "Open file descriptors",
            "Open file descriptors, summed over the instance's workers.",
            "none",
            (selector("process_open_fds"), "{{instance}}"),
            width=5,
        ),
    ]


def variables() -> list[cogbuilder.Builder[models.VariableModel]]:
    return [
        builders.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        builders.QueryVariable("instance")
        .label("Instance")
        .description("Keygen instances (the scrape targets that expose keygen_build_info).")
        .datasource(DATASOURCE)
        .query("label_values(keygen_build_info, instance)")
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(models.VariableOption(selected=True, text="All", value="$__all")),
    ]


def build() -> models.Dashboard:
    """The dashboard model, panels numbered in reading order."""
    board = (
        builders.Dashboard("Keygen")
        .uid(UID)
        .description(
            "Keygen, the ID-range allocation service: allocations, layers, Redis, leases, "
            "the emergency reserve, the ledger, HTTP and the processes (docs/monitoring.md)."
        )
        .tags(["keygen"])
        .time("now-1h", "now")
        .refresh("30s")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .variables(variables())
    )
    rows: list[tuple[str, Sequence[cogbuilder.Builder[models.Panel]]]] = [
        ("Overview", overview()),
        ("Allocations", allocations()),
        ("Layers and breakers", layers()),
        ("Redis", redis()),
        ("Leases", leases()),
        ("Emergency reserve", reserve()),
        ("Ledger", ledger()),
        ("HTTP", http()),
        ("Processes", process()),
    ]
    for title, panels in rows:
        board = board.with_row(builders.Row(title))
        for panel in panels:
            board = board.with_panel(panel)
    model = board.build()
    for number, item in enumerate(model.panels or [], start=1):
        item.id_val = number
    return model


def render() -> str:
    """The dashboard as the JSON that is checked in: sorted keys, two-space indent."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build()) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs from the generator's"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT.name}")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(
                f"{args.output} is out of date: run .venv/bin/python deploy/grafana/dashboard.py",
                file=sys.stderr,
            )
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
