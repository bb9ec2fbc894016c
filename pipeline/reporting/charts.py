"""Hand-written inline SVG charts (no library, no script, no external reference).

Every chart is one `<svg class="chart" data-chart="NAME">`; what it shows is in data attributes,
so a test (or a curious reader of the DOM) can check it without reading pixels:
  `g.series[data-series][data-points][data-t][data-values]` one per plotted series;
  `g.threshold[data-threshold][data-metric][data-value][data-passed]` a gate expression's line;
  `g.limit[data-limit]`, `rect.band[data-band][data-from][data-to]` the soft bands;
  `g.marker[data-marker][data-t]` vertical marks (rollout steps, rollbacks).
All time charts share the same left margin, width and time axis, so they line up on the page.

Why ~900 lines: one inline-SVG chart kit (axes, series, bands, markers) that every chart of the
report shares, so they line up; reporting/README.md says why not a charting library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

WIDTH = 1100
LEFT = 150
RIGHT = 190  # the threshold and limit labels go in this margin, beside their lines
TOP = 34
BOTTOM = 34
PLOT_W = WIDTH - LEFT - RIGHT
DOTS_UP_TO = 90  # draw a dot per point on short series
BAND_LABEL_SIZE = 10.0  # px, svg text.band-label in page.CSS

PALETTE = ("#1c6dd0", "#e8590c", "#2b8a3e", "#9c36b5", "#0b7285", "#c2255c", "#5c940d")
PASS = "#2b8a3e"
FAIL = "#c92a2a"
SKIP = "#868e96"
INK = "#212529"
GRID = "#e9ecef"
BAND_FILL = {
    "green": "#ebfbee",
    "amber": "#fff9db",
    "orange": "#fff4e6",
    "red": "#fff0f0",
    "critical": "#ffe3e3",
}


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def num(value: float) -> str:
    """Compact number for attributes and labels."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}" if abs(value) >= 1e-3 else f"{value:.3g}"


def datum(value: float) -> str:
    """A value in a data attribute: rounded to 3 decimals, exact round trip through float()."""
    text = repr(round(value, 3))
    return text[:-2] if text.endswith(".0") else text


def label_num(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def text_width(text: str, size: float = 12.0, bold: bool = False) -> float:
    """A generous estimate of a text's rendered width in px (DejaVu Sans, the page's font where
    system-ui has no other): at or a little over what Chromium measures (getBBox) for the labels
    we draw, so boxes laid out with it do not overlap on screen."""
    em = 0.0
    for ch in text:
        if ch in " .":
            em += 0.32
        elif ch in ",:;":
            em += 0.36
        elif ch in "il|!'":
            em += 0.30
        elif ch in "fjtr()[]-":
            em += 0.42
        elif ch in "mMwW":
            em += 1.0
        elif ch.isupper():
            em += 0.72
        elif ch.isdigit():
            em += 0.64
        elif ch.isascii():
            em += 0.62
        else:
            em += 0.92
    return em * size * (1.14 if bold else 1.0) * 1.05


def fit_text(text: str, room: float, size: float = 12.0, bold: bool = False) -> str:
    """The text, or as much of it as fits in `room` px with an ellipsis ("" when nothing does)."""
    if text_width(text, size, bold) <= room:
        return text
    for end in range(len(text) - 1, 0, -1):
        short = text[:end].rstrip() + "…"
        if text_width(short, size, bold) <= room:
            return short
    return ""


@dataclass(frozen=True)
class Placed:
    """Where a bar's label goes: its text (maybe shortened), anchor x and side, and its box."""

    text: str
    x: float
    anchor: str  # start, end
    where: str  # right, inside, left (of its bar)
    left: float
    right: float


LABEL_GAP = 6.0


def place_bar_labels(
    bars: Sequence[tuple[float, float]],
    texts: Sequence[str],
    lo: float,
    hi: float,
    size: float = 12.0,
    bold: bool = True,
) -> list[Placed]:
    """Labels for the bars of one row (x0, x1 in px, as drawn), inside [lo, hi], so that no label
    overlaps another label or any bar but its own (which it only enters when it fits inside).

    Each label tries, in order: right of its bar, inside it, left of it; when none fits, it is
    shortened (…) to the largest free room among those three."""
    gap = LABEL_GAP
    order = sorted(range(len(bars)), key=lambda i: bars[i])
    placed: dict[int, Placed] = {}

    def free(a: float, b: float, own: int) -> bool:
        if a < lo or b > hi:
            return False
        for j, (x0, x1) in enumerate(bars):
            if j != own and a < x1 + 1 and b > x0 - 1:
                return False
        return all(b <= p.left - 2 or a >= p.right + 2 for p in placed.values() if p.text)

    def room(a: float, b: float, own: int, grow_right: bool) -> float:
        """How wide a label may be from a (growing right) or from b (growing left)."""
        limit = hi if grow_right else lo
        for j, (x0, x1) in enumerate(bars):
            if j == own:
                continue
            if grow_right and x1 + 1 > a:
                limit = min(limit, x0 - 1 - 2)
            elif not grow_right and x0 - 1 < b:
                limit = max(limit, x1 + 1 + 2)
        for p in placed.values():
            if not p.text:
                continue
            if grow_right and p.right + 2 > a:
                limit = min(limit, p.left - 2)
            elif not grow_right and p.left - 2 < b:
                limit = max(limit, p.right + 2)
        return (limit - a) if grow_right else (b - limit)

    for i in order:
        x0, x1 = bars[i]
        text = texts[i]
        width = text_width(text, size, bold)
        right = (x1 + gap, x1 + gap + width)
        left = (x0 - gap - width, x0 - gap)
        inside = x1 - x0 >= width + 2 * gap
        if free(*right, i):
            placed[i] = Placed(text, right[0], "start", "right", *right)
        elif inside and free(x0 + gap, x0 + gap + width, i):
            placed[i] = Placed(text, x0 + gap, "start", "inside", x0 + gap, x0 + gap + width)
        elif free(*left, i):
            placed[i] = Placed(text, left[1], "end", "left", *left)
        else:
            options = [
                (room(x1 + gap, x1 + gap, i, True), "right"),
                (x1 - x0 - 2 * gap if x1 - x0 > 2 * gap else 0.0, "inside"),
                (room(x0 - gap, x0 - gap, i, False), "left"),
            ]
            best, where = max(options, key=lambda o: o[0])
            short = fit_text(text, best, size, bold)
            w = text_width(short, size, bold) if short else 0.0
            if where == "right":
                placed[i] = Placed(short, x1 + gap, "start", where, x1 + gap, x1 + gap + w)
            elif where == "inside":
                placed[i] = Placed(short, x0 + gap, "start", where, x0 + gap, x0 + gap + w)
            else:
                placed[i] = Placed(short, x0 - gap, "end", where, x0 - gap - w, x0 - gap)
    return [placed[i] for i in range(len(bars))]


def place_in_band(
    top: float, bottom: float, height: float, blocked: Sequence[tuple[float, float]]
) -> float | None:
    """The baseline of a text `height` px tall inside [top, bottom] (px, top < bottom), as low as
    possible, whose box [baseline - height, baseline + 3] meets none of the `blocked` y ranges
    (lines, other labels). None when there is no such place."""
    baseline = bottom - 3
    while baseline - height - 1 >= top:
        hits = [a for a, b in blocked if a < baseline + 4 and b > baseline - height - 1]
        if not hits:
            return baseline
        baseline = min(hits) - 4.01
    return None


def clock(seconds: float, span: float) -> str:
    """Axis label for a time offset: `12 s`, `1:30`, `1:02:03`."""
    seconds = max(0.0, seconds)
    if span <= 120:
        return f"{num(round(seconds, 2))} s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def nice_step(span: float, target: int = 5) -> float:
    if span <= 0:
        return 1.0
    raw = span / target
    magnitude = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if mult * magnitude >= raw:
            return mult * magnitude
    return 10 * magnitude  # pragma: no cover


def ticks(top: float, target: int = 5) -> list[float]:
    step = nice_step(top, target)
    count = int(math.floor(top / step + 1e-9))
    return [i * step for i in range(count + 1)]


def nice_top(value: float) -> float:
    if value <= 0:
        return 1.0
    step = nice_step(value, 5)
    return math.ceil(value / step - 1e-9) * step


def time_ticks(span: float) -> list[float]:
    if span <= 120:
        return ticks(span, 8)
    for step in (15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400):
        if span / step <= 10:
            break
    count = int(span // step)
    return [float(i * step) for i in range(count + 1)]


@dataclass
class Series:
    name: str
    label: str
    ts: list[float]  # start of each point's bin, seconds since the run's start
    values: list[float | None]
    color: str
    style: str = "line"  # line, bar
    width_s: float = 1.0  # bin width (bars; gaps in lines)


@dataclass
class HLine:
    """A horizontal reference: a gate threshold or a hard limit."""

    kind: str  # threshold, limit
    label: str
    value: float
    metric: str = ""
    passed: bool | None = None
    short: str = ""  # the label beside the line: the expression (metric below it), or the limit

    def __post_init__(self) -> None:
        if not self.short:
            self.short = self.label


@dataclass
class Band:
    name: str
    low: float
    high: float


@dataclass
class Marker:
    kind: str  # step, rollback, event
    t: float
    label: str
    attrs: Mapping[str, object] = field(default_factory=dict)


def _attrs(values: Mapping[str, object]) -> str:
    return "".join(f' {key}="{esc(value)}"' for key, value in values.items() if value is not None)


def _series_attrs(series: Series, points: int) -> str:
    return _attrs(
        {
            "class": "series",
            "data-series": series.name,
            "data-label": series.label,
            "data-points": points,
            "data-t": ",".join(datum(t) for t in series.ts),
            "data-values": ",".join("" if v is None else datum(v) for v in series.values),
        }
    )


class TimeChart:
    """A chart over the run's time axis (seconds since the first receipt)."""

    def __init__(
        self,
        chart: str,
        title: str,
        unit: str,
        x_max: float,
        *,
        height: int = 250,
        y_max: float | None = None,
        y_label: str | None = None,
        log: bool = False,
        bin_s: int = 1,
        y_floor: float = 0.0,
    ):
        self.chart, self.title, self.unit = chart, title, unit
        self.log = log
        self.bin_s = bin_s
        self.y_lo = 0.0
        self.x_max = max(x_max, 1.0)
        self.height = height
        self.plot_h = height - TOP - BOTTOM
        self.fixed_y = y_max
        self.y_floor = y_floor  # the linear axis never tops out below this (no zooming on noise)
        self.y_label = y_label or unit
        self.series: list[Series] = []
        self.stacked: list[Series] = []
        self.lines: list[HLine] = []
        self.bands: list[Band] = []
        self.markers: list[Marker] = []
        self.areas: list[tuple[Series, list[tuple[float, float, float, float]]]] = []
        self.y_top = 1.0

    # ---------------------------------------------------------------- scales

    def x(self, t: float) -> float:
        return LEFT + max(0.0, min(t, self.x_max)) / self.x_max * PLOT_W

    def y(self, v: float) -> float:
        v = max(self.y_lo, min(v, self.y_top))
        if self.log:
            low, high = math.log10(self.y_lo), math.log10(self.y_top)
            frac = (math.log10(v) - low) / (high - low)
        else:
            frac = v / self.y_top
        return TOP + self.plot_h - frac * self.plot_h

    def _values(self) -> list[float]:
        values = [v for s in self.series for v in s.values if v is not None]
        return values + [line.value for line in self.lines]

    def _log_range(self) -> tuple[float, float]:
        positive = [v for v in self._values() if v > 0] or [1.0]
        low = 10 ** math.floor(math.log10(min(positive)))
        high = 10 ** math.ceil(math.log10(max(positive) * 1.05))
        return low, max(high, low * 10)

    def y_ticks(self) -> list[float]:
        if not self.log:
            return ticks(self.y_top)
        out, decade = [], self.y_lo
        decades = round(math.log10(self.y_top / self.y_lo))
        while decade <= self.y_top * 1.0001:
            out.append(decade)
            if decades <= 3:
                out += [m * decade for m in (2, 5) if m * decade < self.y_top]
            decade *= 10
        return sorted(out)

    def _top(self) -> float:
        if self.fixed_y is not None:
            return self.fixed_y
        peak = 0.0
        for series in self.series:
            peak = max([peak, *(v for v in series.values if v is not None)])
        if self.stacked:
            for i in range(len(self.stacked[0].values)):
                peak = max(peak, sum((s.values[i] or 0.0) for s in self.stacked))
        for line in self.lines:
            peak = max(peak, line.value)
        return max(nice_top(peak * 1.08 if peak > 0 else 1.0), self.y_floor)

    # ---------------------------------------------------------------- rendering

    def render(self, caption: str = "") -> str:
        if self.log:
            self.y_lo, self.y_top = self._log_range()
        else:
            self.y_top = self._top()
        out: list[str] = [
            f'<svg class="chart" data-chart="{esc(self.chart)}" viewBox="0 0 {WIDTH} {self.height}"'
            f' width="100%" role="img" aria-label="{esc(self.title)}"'
            f' data-unit="{esc(self.unit)}" data-y-max="{num(self.y_top)}"'
            f' data-y-scale="{"log" if self.log else "linear"}" data-bin="{self.bin_s}"'
            f' data-x-max="{num(round(self.x_max, 3))}">',
            f"<title>{esc(self.title)}</title>",
        ]
        out += self._bands()
        out += self._axes()
        out += self._areas()
        out += self._stacked_bars()
        for series in self.series:
            out += self._series(series)
        next_free = 0.0  # labels sit beside their line in the right margin, never overlapping
        for line in sorted(self.lines, key=lambda line: -line.value):
            label_y = max(self.y(line.value) + 4, next_free)
            next_free = label_y + 29  # the label and the metric below it, boxes apart
            out += self._line(line, label_y)
        rows: list[list[tuple[float, float]]] = []  # label extents already used, per text row
        for marker in sorted(self.markers, key=lambda m: m.t):
            out += self._marker(marker, rows)
        out += self._band_labels()
        out += self._legend()
        out.append("</svg>")
        return "".join(out)

    def _bands(self) -> list[str]:
        out = []
        x0, x1 = LEFT, LEFT + PLOT_W
        for band in self.bands:
            low, high = max(self.y_lo, band.low), min(band.high, self.y_top)
            if high <= low:
                continue
            top, bottom = self.y(high), self.y(low)
            fill = BAND_FILL.get(band.name, "#f1f3f5")
            out.append(
                f'<rect class="band" data-band="{esc(band.name)}" data-from="{num(round(band.low, 3))}"'
                f' data-to="{num(round(band.high, 3))}" x="{x0}" y="{top:.1f}" width="{x1 - x0}"'
                f' height="{bottom - top:.1f}" fill="{fill}"/>'
            )
        return out

    def _band_labels(self) -> list[str]:
        """Each band's name inside its band, bottom right (else bottom left), where no line
        (threshold, limit, series, marker) and no other band label crosses it; left out when
        the band has no such place (the caption names the bands anyway)."""
        out: list[str] = []
        x0, x1 = LEFT, LEFT + PLOT_W
        placed: list[tuple[float, float, float, float]] = []  # x0, x1, y0, y1 of labels drawn
        for band in self.bands:
            low, high = max(self.y_lo, band.low), min(band.high, self.y_top)
            if high <= low:
                continue
            top, bottom = self.y(high), self.y(low)
            width = text_width(band.name, BAND_LABEL_SIZE)
            for anchor, tx, xa, xb in (
                ("end", x1 - 4, x1 - 4 - width, x1 - 4),
                ("start", x0 + 4, x0 + 4, x0 + 4 + width),
            ):
                blocked = self.occupied(xa - 2, xb + 2)
                blocked += [(a, b) for pa, pb, a, b in placed if pa < xb and pb > xa]
                baseline = place_in_band(top, bottom, BAND_LABEL_SIZE, blocked)
                if baseline is None:
                    continue
                placed.append((xa, xb, baseline - BAND_LABEL_SIZE, baseline + 3))
                out.append(
                    f'<text x="{tx}" y="{baseline:.1f}" text-anchor="{anchor}" class="band-label"'
                    f' data-band-label="{esc(band.name)}">{esc(band.name)}</text>'
                )
                break
        return out

    def occupied(self, xa: float, xb: float) -> list[tuple[float, float]]:
        """The y ranges (px) that lines (grid, thresholds, limit, series), points, bars and
        markers cover between xa and xb."""
        bottom = TOP + self.plot_h
        spans: list[tuple[float, float]] = []
        for line in self.lines:
            y = self.y(line.value)
            spans.append((y - 2, y + 2))
        for value in self.y_ticks():  # the grid
            y = self.y(value)
            spans.append((y - 0.5, y + 0.5))
        for marker in self.markers:
            if xa <= self.x(marker.t) <= xb:
                spans.append((TOP, bottom))
        for series in self.series:
            points = [
                (self.x(t + series.width_s / 2), self.y(v), t)
                for t, v in zip(series.ts, series.values, strict=True)
                if v is not None
            ]
            if series.style == "bar":
                for t, v in zip(series.ts, series.values, strict=True):
                    if v is not None and self.x(t) < xb and self.x(t + series.width_s) > xa:
                        spans.append((self.y(v), bottom))
                continue
            for i, (px, py, t) in enumerate(points):
                if xa - 4 <= px <= xb + 4:
                    spans.append((py - 4, py + 4))  # the point's dot
                if i + 1 < len(points):
                    qx, qy, qt = points[i + 1]
                    joined = qt - t <= series.width_s * 1.5
                    if joined and px < xb and qx > xa:
                        spans.append((min(py, qy) - 2, max(py, qy) + 2))
        stacks = self.stacked
        for i in range(len(stacks[0].values) if stacks else 0):
            t = stacks[0].ts[i]
            if self.x(t) < xb and self.x(t + stacks[0].width_s) > xa:
                total = sum((s.values[i] or 0.0) for s in stacks)
                spans.append((self.y(total), bottom))
        for _, rects in self.areas:
            for t0, t1, low, high in rects:
                if high > low and self.x(t0) < xb and self.x(t1) > xa:
                    spans.append((self.y(high), self.y(low)))
        return spans

    def _axes(self) -> list[str]:
        out = []
        bottom = TOP + self.plot_h
        for value in self.y_ticks():
            y = self.y(value)
            out.append(
                f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
                f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                f"{esc(label_num(value))}</text>"
            )
        for t in time_ticks(self.x_max):
            x = self.x(t)
            out.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="{INK}"/>'
                f'<text x="{x:.1f}" y="{bottom + 17}" text-anchor="middle" class="tick">'
                f"{esc(clock(t, self.x_max))}</text>"
            )
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{bottom}" y2="{bottom}" stroke="{INK}"/>'
            f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom}" stroke="{INK}"/>'
            f'<text x="{LEFT - 48}" y="{TOP + self.plot_h / 2:.1f}" text-anchor="middle"'
            f' class="axis" transform="rotate(-90 {LEFT - 48} {TOP + self.plot_h / 2:.1f})">'
            f"{esc(self.y_label)}</text>"
        )
        return out

    def _series(self, series: Series) -> list[str]:
        points = [(t, v) for t, v in zip(series.ts, series.values, strict=True) if v is not None]
        out = [f"<g{_series_attrs(series, len(points))}>"]
        if series.style == "bar":
            for t, v in points:
                out.append(self._bar(t, series.width_s, 0.0, v, series.color))
        else:
            path: list[str] = []
            previous: float | None = None
            for t, v in points:
                mid = t + series.width_s / 2
                jump = previous is None or mid - previous > series.width_s * 1.5
                path.append(f"{'M' if jump else 'L'}{self.x(mid):.1f},{self.y(v):.1f}")
                previous = mid
            if path:
                out.append(
                    f'<path d="{"".join(path)}" fill="none" stroke="{series.color}"'
                    ' stroke-width="2" stroke-linejoin="round"/>'
                )
            if len(points) <= DOTS_UP_TO:
                for t, v in points:
                    mid = t + series.width_s / 2
                    out.append(
                        f'<circle cx="{self.x(mid):.1f}" cy="{self.y(v):.1f}" r="3"'
                        f' fill="{series.color}"/>'
                    )
        out.append("</g>")
        return out

    def _bar(self, t: float, width_s: float, base: float, value: float, color: str) -> str:
        x0, x1 = self.x(t), self.x(t + width_s)
        gap = 1.0 if x1 - x0 > 3 else 0.0
        top, bottom = self.y(base + value), self.y(base)
        return (
            f'<rect x="{x0 + gap / 2:.1f}" y="{top:.1f}" width="{max(x1 - x0 - gap, 0.8):.1f}"'
            f' height="{max(bottom - top, 0.0):.1f}" fill="{color}"/>'
        )

    def _stacked_bars(self) -> list[str]:
        out: list[str] = []
        if not self.stacked:
            return out
        bases = [0.0] * len(self.stacked[0].values)
        for series in self.stacked:
            count = sum(1 for v in series.values if v is not None)
            out.append(f"<g{_series_attrs(series, count)}>")
            for i, (t, v) in enumerate(zip(series.ts, series.values, strict=True)):
                if v:
                    out.append(self._bar(t, series.width_s, bases[i], v, series.color))
                    bases[i] += v
            out.append("</g>")
        return out

    def add_area(self, series: Series, rects: list[tuple[float, float, float, float]]) -> None:
        """A stacked area as rectangles (t0, t1, low, high) for step-shaped data (traffic)."""
        self.areas.append((series, rects))

    def _areas(self) -> list[str]:
        out = []
        for series, rects in self.areas:
            count = sum(1 for v in series.values if v is not None)
            out.append(f"<g{_series_attrs(series, count)}>")
            for t0, t1, low, high in rects:
                if high <= low or t1 <= t0:
                    continue
                x0, x1 = self.x(t0), self.x(t1)
                top, bottom = self.y(high), self.y(low)
                out.append(
                    f'<rect x="{x0:.1f}" y="{top:.1f}" width="{max(x1 - x0, 0.8):.1f}"'
                    f' height="{bottom - top:.1f}" fill="{series.color}" fill-opacity="0.75"/>'
                )
            out.append("</g>")
        return out

    def _line(self, line: HLine, label_y: float) -> list[str]:
        y = self.y(line.value)
        if line.kind == "limit":
            color, dash, width = INK, "", 2.5
        else:
            color = FAIL if line.passed is False else "#495057"
            dash, width = ' stroke-dasharray="7 4"', 1.8
        mark = "" if line.passed is None else (" ✓" if line.passed else " ✗")
        attrs: dict[str, object] = {"class": line.kind}
        if line.kind == "limit":
            attrs["data-limit"] = num(line.value)
        else:
            attrs.update(
                {
                    "data-threshold": line.label,
                    "data-metric": line.metric,
                    "data-value": num(line.value),
                    "data-passed": None if line.passed is None else str(line.passed).lower(),
                }
            )
        room = WIDTH - (LEFT + PLOT_W + 8) - 4  # the labels stay inside the chart
        metric = line.metric if line.kind == "threshold" else "limit"
        return [
            f"<g{_attrs(attrs)}><title>{esc(line.label + mark)}</title>",
            f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}"'
            f' stroke-width="{width}"{dash}/>',
            f'<line x1="{LEFT + PLOT_W}" x2="{LEFT + PLOT_W + 6}" y1="{y:.1f}" y2="{label_y - 4:.1f}"'
            f' stroke="{color}"/>',
            f'<text x="{LEFT + PLOT_W + 8}" y="{label_y:.1f}" class="line-label" fill="{color}">'
            f"{esc(fit_text(line.short + mark, room, 12.0, True))}</text>",
            f'<text x="{LEFT + PLOT_W + 8}" y="{label_y + 13.5:.1f}" class="line-metric">'
            f"{esc(fit_text(metric, room, 10.5))}</text>",
            "</g>",
        ]

    def _marker(self, marker: Marker, rows: list[list[tuple[float, float]]]) -> list[str]:
        x = self.x(marker.t)
        color = FAIL if marker.kind == "rollback" else "#495057"
        attrs = {
            "class": "marker",
            "data-marker": marker.kind,
            "data-t": datum(marker.t),
            "data-label": marker.label,
            **marker.attrs,
        }
        dash = "" if marker.kind == "rollback" else ' stroke-dasharray="3 3"'
        width = 2.5 if marker.kind == "rollback" else 1.2
        text_w = 6.5 * len(marker.label) + 4
        start, anchor, tx = x + 3, "start", x + 3  # right of the line, or left near the edge
        if start + text_w > LEFT + PLOT_W:
            start, anchor, tx = x - 3 - text_w, "end", x - 3
        row = next(  # the first text row (from the bottom) where the label fits
            (
                i
                for i, used in enumerate(rows)
                if all(start + text_w < a or start > b for a, b in used)
            ),
            len(rows),
        )
        if row == len(rows):
            rows.append([])
        rows[row].append((start, start + text_w))
        ty = TOP + self.plot_h - 6 - 14 * row
        return [
            f"<g{_attrs(attrs)}>",
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + self.plot_h}" stroke="{color}"'
            f' stroke-width="{width}"{dash}/>',
            f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" class="marker-label"'
            f' fill="{color}">{esc(marker.label)}</text>',
            "</g>",
        ]

    def _legend(self) -> list[str]:
        items: list[tuple[str, str, str]] = []  # (kind, color, label)
        for series, _ in self.areas:
            items.append(("box", series.color, series.label))
        for series in self.stacked:
            items.append(("box", series.color, series.label))
        for series in self.series:
            items.append(("box" if series.style == "bar" else "line", series.color, series.label))
        if any(line.kind == "threshold" for line in self.lines):
            items.append(("dash", "#495057", "gate threshold"))
        if any(line.kind == "limit" for line in self.lines):
            items.append(("line", INK, "limit"))
        out, x = [], LEFT
        for kind, color, label in items:
            if kind == "box":
                out.append(f'<rect x="{x}" y="10" width="14" height="10" fill="{color}"/>')
            else:
                dash = ' stroke-dasharray="5 3"' if kind == "dash" else ""
                out.append(
                    f'<line x1="{x}" x2="{x + 16}" y1="15" y2="15" stroke="{color}"'
                    f' stroke-width="2.5"{dash}/>'
                )
            out.append(f'<text x="{x + 20}" y="19" class="legend">{esc(label)}</text>')
            x += 34 + 7 * len(label)
        return out


class Empty(str):
    """A chart with nothing to draw (its SVG says why): the page leaves such panels out."""

    why: str

    def __new__(cls, svg: str, why: str) -> Empty:
        made = super().__new__(cls, svg)
        made.why = why
        return made


def empty_chart(chart: str, title: str, why: str) -> Empty:
    return Empty(
        f'<svg class="chart" data-chart="{esc(chart)}" data-empty="true" viewBox="0 0 {WIDTH} 60"'
        f' width="100%" role="img" aria-label="{esc(title)}"><title>{esc(title)}</title>'
        f'<text x="{LEFT}" y="34" class="empty">{esc(why)}</text></svg>',
        why,
    )


# ---------------------------------------------------------------- non-time charts


@dataclass
class Row:
    label: str
    value: float
    passed: bool
    note: str
    attrs: Mapping[str, object]


def bar_rows(chart: str, title: str, unit: str, rows: Sequence[Row], series: str) -> str:
    """Horizontal bars, one row each (smoke tests: latency, ✓/✗, status)."""
    row_h = 24
    height = TOP + row_h * len(rows) + BOTTOM
    plot_h = row_h * len(rows)
    peak = max((r.value for r in rows), default=0.0)
    top = nice_top(peak * 1.15 if peak > 0 else 1.0)
    width = PLOT_W - 230  # room for the note after the longest bar

    def x(v: float) -> float:
        return LEFT + max(0.0, v) / top * width

    values = ",".join(datum(r.value) for r in rows)
    out = [
        f'<svg class="chart" data-chart="{esc(chart)}" viewBox="0 0 {WIDTH} {height}"'
        f' width="100%" role="img" aria-label="{esc(title)}" data-unit="{esc(unit)}">',
        f"<title>{esc(title)}</title>",
    ]
    for value in ticks(top):
        gx = x(value)
        out.append(
            f'<line x1="{gx:.1f}" x2="{gx:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="{GRID}"/>'
            f'<text x="{gx:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" class="tick">'
            f"{esc(label_num(value))}</text>"
        )
    out.append(
        f'<text x="{LEFT + width / 2:.1f}" y="{TOP + plot_h + 30}" text-anchor="middle"'
        f' class="axis">{esc(unit)}</text>'
    )
    passed = sum(r.passed for r in rows)
    out.append(
        f'<g class="series" data-series="{esc(series)}" data-points="{len(rows)}"'
        f' data-values="{esc(values)}" data-passed="{passed}" data-failed="{len(rows) - passed}">'
    )
    for i, row in enumerate(rows):
        y = TOP + i * row_h
        color = PASS if row.passed else FAIL
        end = x(row.value)
        mark = "✓" if row.passed else "✗"
        out.append(
            f"<g{_attrs({'class': 'row', 'data-passed': str(row.passed).lower(), **row.attrs})}>"
            f'<text x="{LEFT - 8}" y="{y + 16}" text-anchor="end" class="row-label">'
            f"{esc(row.label)}</text>"
            f'<rect x="{LEFT}" y="{y + 4}" width="{max(end - LEFT, 1.5):.1f}" height="{row_h - 8}"'
            f' fill="{color}"/>'
            f'<text x="{end + 6:.1f}" y="{y + 16}" class="row-note" fill="{color}">'
            f"{esc(mark + ' ' + row.note)}</text></g>"
        )
    out.append("</g>")
    out.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="{INK}"/>')
    out.append("</svg>")
    return "".join(out)


@dataclass
class Span:
    row: str
    start: float
    end: float
    state: str  # passed, failed, skipped, open
    label: str
    attrs: Mapping[str, object]


def gantt(chart: str, title: str, spans: Sequence[Span], x_max: float) -> str:
    """The stage timeline: a row per stage name, a bar per run of it, on the run's time axis."""
    rows: list[str] = []
    for span in spans:
        if span.row not in rows:
            rows.append(span.row)
    row_h = 26
    plot_h = row_h * len(rows)
    height = TOP + plot_h + BOTTOM
    x_max = max(x_max, 1.0)

    def x(t: float) -> float:
        return LEFT + max(0.0, min(t, x_max)) / x_max * PLOT_W

    colors = {"passed": PASS, "failed": FAIL, "skipped": SKIP, "open": "#f08c00"}
    out = [
        f'<svg class="chart" data-chart="{esc(chart)}" viewBox="0 0 {WIDTH} {height}"'
        f' width="100%" role="img" aria-label="{esc(title)}" data-x-max="{num(round(x_max, 3))}">',
        f"<title>{esc(title)}</title>",
    ]
    for t in time_ticks(x_max):
        gx = x(t)
        out.append(
            f'<line x1="{gx:.1f}" x2="{gx:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="{GRID}"/>'
            f'<text x="{gx:.1f}" y="{TOP + plot_h + 17}" text-anchor="middle" class="tick">'
            f"{esc(clock(t, x_max))}</text>"
        )
    for i, name in enumerate(rows):
        shown = fit_text(name, LEFT - 8 - 4)  # the names' column is the left margin
        out.append(
            f'<text x="{LEFT - 8}" y="{TOP + i * row_h + 17}" text-anchor="end" class="row-label">'
            + (f"<title>{esc(name)}</title>" if shown != name else "")
            + f"{esc(shown)}</text>"
        )
    states = ",".join(s.state for s in spans)
    out.append(
        f'<g class="series" data-series="stages" data-points="{len(spans)}"'
        f' data-values="{esc(states)}">'
    )
    drawn: list[tuple[float, float]] = []  # each span's bar as drawn, px
    for span in spans:
        x0 = x(span.start)
        x1 = x0 + 6 if span.state == "skipped" else max(x(span.end), x0 + 2.0)
        drawn.append((x0, x1))
    labels: dict[int, Placed] = {}
    for name in rows:  # labels right of, inside or left of their bar, never over anything
        mine = [i for i, span in enumerate(spans) if span.row == name]
        found = place_bar_labels(
            [drawn[i] for i in mine], [spans[i].label for i in mine], LEFT + 2, WIDTH - 4
        )
        labels.update(zip(mine, found, strict=True))
    for n, (span, (x0, x1)) in enumerate(zip(spans, drawn, strict=True)):
        label = labels[n]
        i = rows.index(span.row)
        y = TOP + i * row_h + 4
        color = colors.get(span.state, SKIP)
        attrs = {
            "class": "stage",
            "data-stage": span.row,
            "data-state": span.state,
            **span.attrs,
            "data-label-x0": f"{label.left:.1f}",
            "data-label-x1": f"{label.right:.1f}",
            "data-bar-x0": f"{x0:.1f}",
            "data-bar-x1": f"{x1:.1f}",
        }
        out.append(f"<g{_attrs(attrs)}><title>{esc(span.row + ': ' + span.label)}</title>")
        corner = "" if span.state == "skipped" else ' rx="2"'
        out.append(
            f'<rect x="{x0:.1f}" y="{y}" width="{x1 - x0:.1f}" height="{row_h - 8}"'
            f' fill="{color}"{corner}/>'
        )
        if label.text:
            inside = label.where == "inside"
            out.append(
                f'<text x="{label.x:.1f}" y="{y + 13}" text-anchor="{label.anchor}"'
                f' class="row-note{" inside" if inside else ""}"'
                f' fill="{"#fff" if inside else color}">{esc(label.text)}</text>'
            )
        out.append("</g>")
    out.append("</g>")
    out.append(
        f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"'
        f' stroke="{INK}"/>'
    )
    legend = [("passed", PASS), ("failed", FAIL), ("skipped", SKIP), ("no end", "#f08c00")]
    lx = LEFT
    for state, color in legend:
        out.append(
            f'<rect x="{lx}" y="10" width="14" height="10" fill="{color}"/>'
            f'<text x="{lx + 20}" y="19" class="legend">{state}</text>'
        )
        lx += 34 + 7 * len(state)
    out.append("</svg>")
    return "".join(out)
