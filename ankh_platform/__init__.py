"""Import shim: ``ankh_platform`` is the code in ``platform/`` (next to this folder).

Installed copies get the same mapping from setuptools' ``package-dir``; this shim makes a
source checkout -- and a ``ray job submit --working-dir .`` upload, whose directory is first on
``sys.path`` in the driver and every Ray worker -- import its *own* ``platform/`` code, never an
installed copy of another version. ``platform/`` itself has no ``__init__.py`` on purpose: a
package named ``platform`` would shadow the standard library.
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parent.parent / "platform")]
