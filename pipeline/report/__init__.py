"""A run's report: build.py assembles report.json and writes the files, markdown.py renders report.md,
html.py report.html, arm64.py the emulated arm64 accuracy table."""
