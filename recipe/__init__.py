"""The recipe: what one compression job does, from its inputs to its artifacts, with vdcore and files only (no
queue, database or HTTP). ``vdc compress``, the API's checks at submission and the worker's task all call it."""
