"""The synthetic SAGE sky: `python -m data.synthetic --help`. `generate` writes the download's exact layout;
`render` holds the physics and the pixels."""
