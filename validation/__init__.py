"""The validation suite: one module per experiment, run by ``python -m validation``.

Each experiment module (``agreement``, ``calibration``, ``power``, ``runtime``) defines

* ``NAME``: its name, also the name of its config file ``configs/<NAME>.toml``;
* ``SOURCES``: the other modules of this folder whose code its results depend on;
* ``run(config, *, results_dir, workers, progress) -> list[Path]``: computes and writes its
  tidy tables to ``results_dir`` (through :func:`validation.provenance.write_table`) and
  returns their paths.

Figures (``figures/fig_*.py``) and the report read only those tables.
"""
