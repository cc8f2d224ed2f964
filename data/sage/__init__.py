"""Everything that talks to SAGE: the data-API query (`query`), the storage download (`download`, `fetch`) and
the node registry of dated locations (`registry`, `nodes`, `nodes.json`).

    python -m data.sage.download --vsn W056 --start 2023-03-10 --end 2023-03-24 --out RAW
    python -m data.sage.nodes show W056
"""
