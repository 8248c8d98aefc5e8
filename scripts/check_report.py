#!/usr/bin/env python3
"""Renders a wick report (report.html) in headless Chromium and checks what a reader sees.

    python3 scripts/check_report.py RUN_DIR/report.html [--screenshot OUT.png]

Checks: the page loads and logs nothing to the console (the report has no scripts, so any
console message is an error: a blocked resource, bad markup); the rendered DOM holds the
curve charts with drawn lines and data points, the BLEU-by-length chart and attention maps;
the screenshot is not blank (enough pixels that are neither white nor one flat colour).
Needs Chromium (Debian: `apt-get install chromium`; or set CHROMIUM). Exits non-zero on the
first failed check, saying which.
"""
import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib


def chromium():
    path = os.environ.get("CHROMIUM") or next(
        (p for p in ("chromium", "chromium-browser", "google-chrome") if shutil.which(p)), None
    )
    if not path:
        sys.exit("check_report: no Chromium found (apt-get install chromium, or set CHROMIUM)")
    return path


def run_chromium(exe, profile, args):
    # The flags of a headless, offline browser: no sandbox (CI runs as root), no GPU, and none
    # of the background connections a closed network would refuse.
    base = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
    ]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=120)


def png_pixels(path):
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        sys.exit(f"check_report: {path} is not a PNG")
    pos, idat, width = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            if depth != 8 or colour not in (2, 6):
                sys.exit(f"check_report: unexpected PNG format (depth {depth}, colour {colour})")
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("--screenshot", help="keep the screenshot here")
    args = ap.parse_args()
    url = "file://" + os.path.abspath(args.report)
    exe = chromium()
    with tempfile.TemporaryDirectory() as tmp:
        dom = run_chromium(exe, f"{tmp}/p1", ["--virtual-time-budget=5000", "--dump-dom", url])
        if dom.returncode != 0 or "<html" not in dom.stdout:
            sys.exit(f"check_report: Chromium did not render the page:\n{dom.stderr[-2000:]}")
        console = [l for l in dom.stderr.splitlines() if "CONSOLE" in l]
        if console:
            sys.exit("check_report: console messages:\n" + "\n".join(console))
        html = dom.stdout
        charts = re.findall(r'<svg class="chart" id="([^"]+)"', html)
        lines = [p for p in re.findall(r'<polyline points="([^"]*)"', html) if p.strip()]
        points = re.findall(r'<circle [^>]*data-y="', html)
        maps = html.count('<svg class="heatmap"')
        print(f"charts {len(charts)}, drawn lines {len(lines)}, data points {len(points)}, "
              f"attention maps {maps}")
        for want in ("loss-step", "loss-time", "scores-step", "scores-time", "lr-step", "speed-step"):
            if want not in charts:
                sys.exit(f"check_report: the rendered page has no chart `{want}`")
        if len(lines) < 6 or len(points) < 2:
            sys.exit("check_report: the charts have no curves")
        shot = args.screenshot or f"{tmp}/shot.png"
        r = run_chromium(exe, f"{tmp}/p2", ["--window-size=1280,2400", f"--screenshot={shot}", url])
        if r.returncode != 0 or not os.path.exists(shot):
            sys.exit(f"check_report: no screenshot:\n{r.stderr[-2000:]}")
        width, height, bpp, rows = png_pixels(shot)
        inked = colours = 0
        seen = set()
        for row in rows[::4]:
            for x in range(0, width * bpp, 4 * bpp):
                px = row[x:x + 3]
                seen.add(px)
                inked += px != b"\xff\xff\xff"
        colours = len(seen)
        share = inked / (len(rows[::4]) * len(range(0, width * bpp, 4 * bpp)))
        print(f"screenshot {width}×{height}: {share:.1%} of sampled pixels not white, {colours} colours")
        if share < 0.02 or colours < 8:
            sys.exit("check_report: the screenshot is blank")
    print("report renders")


if __name__ == "__main__":
    main()
