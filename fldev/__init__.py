"""Development tools shared by ``tests/`` and ``bench/``; not part of the installed product.

A real flstack deployment on 127.0.0.1 (:mod:`fldev.cluster`), a network
link between a client and the server that tests cut, stall or slow down
(:mod:`fldev.netproxy`), an app with a model of any size
(:mod:`fldev.mlpapp`), the one polling helper (:mod:`fldev.poll`), feeds
that drive the console without a server (:mod:`fldev.replay`,
:mod:`fldev.busyfeed`), what a daemon does at a fault point
(:mod:`fldev.faultswitch`) and a workspace on a small disk that fills up
(:mod:`fldev.smalldisk`). The package is importable from a checkout of the
repository only: pyproject.toml does not install it, and no product package
imports it; :mod:`flcore.faultpoints` looks for its fault switch beside
``flcore`` only, and only when ``FLSTACK_FAULT`` is set.
"""
