"""Xray2XrayWeb: the Xray2Xray Slicer module's workflow in a web browser, on trame-slicer.

trame-slicer (Kitware) runs Slicer's MRML scene, its logics and its VTK slice and 3D views in
a plain Python process and streams the views to a web page. On that scene this front end
runs the Slicer module's own Qt-free layer, ``Xray2XrayLib``, unchanged: the same
``Xray2XrayCoreLogic`` loads CTs and radiographs, renders DRRs into a sequence of nodes
placed on their detector planes, writes radiographs for and loads the outputs of the same
background inference job (``Xray2XrayLib.jobs.inferJob``, the package's ``xray2xray infer``)
and builds the same results table. Nothing here re-implements them.

* :mod:`.session` -- the work, without trame (tested on plain slicer-core): inputs (command
  line, upload, ``--data-dir``, the synthetic chest) with the security rules, DRR and
  inference jobs, the table, the downloads.
* :mod:`.app` -- the page: panels, views, progress and Cancel, on trame and trame-slicer.

Where it lives and how it starts: beside ``Xray2XrayLib`` in the checkout's ``Xray2Xray/``
folder, because it is part of the Slicer layer (layer 6 of DESIGN.md, with the Slicer
module); it is not part of the Slicer extension (the module's CMakeLists.txt does not list
it). ``xray2xray web`` (``XrayWorldModel.web``) runs ``python -m Xray2XrayWeb`` with that
folder on ``PYTHONPATH``; the package never imports it.
"""
