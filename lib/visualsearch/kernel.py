"""The project's Jupyter kernel: IPython's kernel, reporting its Python version as major.minor ("3.11").

Why: when JupyterLab connects a kernel it copies the kernel's `language_info` into the notebook's metadata
and marks the notebook modified if that differs from what the file holds. IPython reports the full patch
version (3.11.7), so a notebook committed from one machine would open "modified" on every machine with
another 3.11.x. The project needs Python 3.11, so the minor version is the part that is true everywhere; the
committed notebooks hold exactly this `LANGUAGE_INFO` (see notebook_files.clean). scripts/setup_env.sh
registers this module as the kernel "visualsearch".
"""
from __future__ import annotations

import sys

from ipykernel.ipkernel import IPythonKernel

LANGUAGE_INFO = {**IPythonKernel.language_info, "version": f"{sys.version_info[0]}.{sys.version_info[1]}"}


class VisualsearchKernel(IPythonKernel):
    """IPythonKernel with `LANGUAGE_INFO`; nothing else differs."""

    language_info = LANGUAGE_INFO


if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(kernel_class=VisualsearchKernel)
