"""The hostile-archive corpus run through the real ``oxbak`` command (see ``build.py``)."""
