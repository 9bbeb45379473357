"""Search what you embedded: a persistent nearest-neighbour index over ``jobs.embed`` output.

Modules: ``config`` (the settings of ``jobs.index`` / ``jobs.search``), ``manifest`` (what an
index holds and what may be added to it), ``build`` (the resumable, incremental build),
``index`` (open an index and search it: IVF-PQ candidates re-ranked with the full vectors),
``query`` (embed queries with the index's own model and write the hits). See docs/search.md.
"""
