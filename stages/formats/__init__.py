"""Mobile model formats, one module each: its config models (declared beside the code), export to the
format, INT8 with the format's own toolchain. Runners for the files live in targets/."""
