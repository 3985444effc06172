"""Manual single-positive labels from a local web page: ``python -m splml.annotate``.

:mod:`~splml.annotate.items` lists the images (exactly those ``labels=manual`` needs) and
renders them, :class:`splml.io.label_files.AnnotationLog` is the crash-safe, locked annotation
file (read by the same reader as ``labels=manual``),
:mod:`~splml.annotate.session` the queue and the actions, :mod:`~splml.annotate.server` the
HTTP server and ``static/`` the page.
"""
