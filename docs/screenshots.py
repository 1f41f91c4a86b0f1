"""Screenshots of the built documentation in headless Chromium (not run in CI).

Serves ``docs/_build/html`` on localhost and takes a full-width screenshot of the
landing page, an API page, a gallery page and the lme4 page, to look at before a
release::

    python -m sphinx -W -b html docs docs/_build/html
    python docs/screenshots.py                 # PNGs in docs/_build/screenshots/

Needs Chromium (``apt-get install -y chromium``). Each screenshot uses a fresh profile
directory and no network beyond the local server. The site loads MathJax from its CDN;
without a network the formulas would show as TeX, so when a local MathJax is found
(Debian's ``libjs-mathjax``, or ``--mathjax DIR``) the server serves it in the CDN's
place.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

DOCS = Path(__file__).resolve().parent
PAGES = {
    "landing": "index.html",
    "api_mixedlmregressor": "api/generated/mixedlm_sklearn.MixedLMRegressor.html",
    "gallery_sleepstudy": "auto_examples/sleepstudy.html",
    "coming_from_lme4": "coming_from/lme4.html",
}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


LOCAL_MATHJAX = Path("/usr/share/javascript/mathjax")
CDN_MATHJAX = re.compile(r'<script[^>]*src="https://cdn\.jsdelivr\.net/npm/mathjax[^"]*"[^>]*>'
                         r"</script>|<script>window\.MathJax = [^<]*</script>")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site; with ``mathjax`` set, a local MathJax 2 instead of the CDN's."""

    mathjax: Path | None = None

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def translate_path(self, path: str) -> str:
        if self.mathjax is not None and path.startswith("/_local_mathjax/"):
            return str(self.mathjax / path.split("?")[0][len("/_local_mathjax/"):])
        return super().translate_path(path)

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if self.mathjax is None or path.suffix != ".html" or not path.is_file():
            return super().send_head()
        html = path.read_text(encoding="utf-8")
        # MyST marks the page's sections tex2jax_ignore and the formulas class "math":
        # MathJax 2 is told to process those (MathJax 4, the site's, is told by Sphinx)
        local = ('<script type="text/x-mathjax-config">MathJax.Hub.Config({tex2jax: '
                 '{processClass: "math|tex2jax_process|mathjax_process"}});</script>'
                 '<script src="/_local_mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML">'
                 "</script>")
        html = CDN_MATHJAX.sub("", html, count=2)
        if 'class="math' in html:
            html = html.replace("</head>", local + "</head>", 1)
        body = html.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    raise SystemExit("no Chromium found: apt-get install -y chromium")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=DOCS / "_build" / "html")
    parser.add_argument("--out", type=Path, default=DOCS / "_build" / "screenshots")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2200)
    parser.add_argument("--mathjax", type=Path,
                        default=LOCAL_MATHJAX if LOCAL_MATHJAX.is_dir() else None,
                        help="a local MathJax 2 folder to serve instead of the CDN's")
    parser.add_argument("pages", nargs="*", metavar="PAGE",
                        help="other pages to shoot, as paths below the site's root "
                             "(user_guide/prediction.html); default the four above")
    args = parser.parse_args()
    pages = {Path(p).with_suffix("").as_posix().replace("/", "_"): p for p in args.pages} or PAGES
    if not (args.html / "index.html").is_file():
        raise SystemExit(f"no built site in {args.html}: build the docs first")
    args.out.mkdir(parents=True, exist_ok=True)

    _QuietHandler.mathjax = args.mathjax
    handler = functools.partial(_QuietHandler, directory=str(args.html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    browser = _browser()
    try:
        for name, page in pages.items():
            png = args.out / f"{name}.png"
            with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
                subprocess.run(
                    [browser, *FLAGS, f"--user-data-dir={profile}",
                     f"--window-size={args.width},{args.height}",
                     "--virtual-time-budget=5000", f"--screenshot={png}",
                     f"http://127.0.0.1:{port}/{page}"],
                    check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    timeout=120)
            print(png)
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
