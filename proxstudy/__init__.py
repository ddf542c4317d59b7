"""proxstudy: hyperparameter-robustness studies of Proximal Backpropagation against BackProp.

The repository keeps one folder per concern (``study/``, ``workers/``, ``dashboards/``); once
installed they live under this package (``proxstudy.study`` ...), mapped by setuptools'
``package-dir``, so the product claims no generic top-level names. ``proxprop`` (the layers)
stays a top-level package of its own, as users of the reference release expect.
"""

__version__ = "0.1.0"
