"""An analysis' outputs: tables (csv + md), figures (PNG) and its report section, all written atomically.

``<results_dir>/analyses/<name>/``: ``<stem>.csv`` / ``<stem>.md`` per table, ``<stem>.png`` per figure,
``section.md`` (the whole section as markdown, also printed) and ``section.html`` (a self-contained
fragment, figures inlined, that ``bench.report`` puts into the results dir's HTML report).
"""

from __future__ import annotations

import html
import io
from pathlib import Path

import pandas as pd

from bench.io import write_bytes, write_text


class Section:
    def __init__(self, directory: Path, title: str):
        self.directory, self.title = Path(directory), title
        self._md: list[str] = [f"## {title}"]
        self._html: list[str] = [f"<h2>{html.escape(title)}</h2>"]

    def text(self, paragraph: str) -> None:
        self._md.append(paragraph)
        self._html.append(f"<p>{html.escape(paragraph)}</p>")

    def note(self, paragraph: str) -> None:
        self._md.append(f"_{paragraph}_")
        self._html.append(f"<p class='note'>{html.escape(paragraph)}</p>")

    def table(self, frame: pd.DataFrame, stem: str, caption: str, display: pd.DataFrame | None = None) -> None:
        """Write ``frame`` as ``<stem>.csv`` (raw numbers) and ``<stem>.md`` (``display``, default = ``frame``)."""
        from bench.report import table_html
        from bench.tables import to_markdown

        shown = frame if display is None else display
        write_text(self.directory / f"{stem}.csv", frame.to_csv(index=False))
        markdown = to_markdown(shown)
        write_text(self.directory / f"{stem}.md", f"{caption}\n\n{markdown}")
        self._md += [f"{caption} (`{stem}.csv`)", markdown]
        self._html.append(table_html(shown, caption=f"{caption} ({stem}.csv)"))

    def figure(self, figure, stem: str, caption: str) -> Path:
        """Save a matplotlib figure as ``<stem>.png`` (and close it)."""
        import base64

        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        try:
            figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        finally:
            plt.close(figure)
        path = self.directory / f"{stem}.png"
        write_bytes(path, buffer.getvalue())
        self._md.append(f"![{caption}]({stem}.png)")
        uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        self._html.append(f"<figure><img src='{uri}' alt='{html.escape(stem)}' style='max-width:900px'>"
                          f"<figcaption style='max-width:900px'>{html.escape(caption)} ({stem}.png)</figcaption></figure>")
        return path

    def markdown(self) -> str:
        return "\n\n".join(self._md) + "\n"

    def write(self) -> None:
        write_text(self.directory / "section.md", self.markdown())
        write_text(self.directory / "section.html", "\n".join(self._html) + "\n")
        print(self.markdown())


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt
