"""Raw uploads → index + arrays: `python -m data.prepare --help`. `run` is the command; `pairing` finds and pairs
files, `images` decodes one pair (with its cache), `thermal_parse` is the compiled thermal-CSV reader."""
