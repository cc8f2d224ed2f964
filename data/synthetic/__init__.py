"""The synthetic SAGE sky: `python -m data.synthetic --help` writes the download's exact layout (`generate`,
`layout`) from day-to-day weather (`weather`), multi-scale clouds (`field`), physics (`render`), a camera model
(`camera`) and per-capture truth with forecast oracles (`oracle`); `python -m data.synthetic.stats RAW` sums it up."""
