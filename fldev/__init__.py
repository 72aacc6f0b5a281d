"""Development tools shared by ``tests/`` and ``bench/``; not part of the installed product.

A real flstack deployment on 127.0.0.1 (:mod:`fldev.cluster`), a network
link between a client and the server that tests cut, stall or slow down
(:mod:`fldev.netproxy`), an app with a model of any size
(:mod:`fldev.mlpapp`), the one polling helper (:mod:`fldev.poll`), and
feeds that drive the console without a server (:mod:`fldev.replay`,
:mod:`fldev.busyfeed`). The package
is importable from a checkout of the repository only: pyproject.toml does
not install it, and no product package may import it.
"""
