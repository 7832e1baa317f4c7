"""Instance labels from prediction maps, block by block, equal to the whole-volume decoders.

- :mod:`~volumes.labels.decoders`: PyTC's connected-components decoders (their parameters, the
  foreground of a block, the whole-volume decoder in memory);
- :mod:`~volumes.labels.blockcc`: a block's local labels, their statistics and faces, and the
  links between neighbouring blocks' labels across faces, edges and corners;
- :mod:`~volumes.labels.merge`: the union of linked pieces into objects, the numbering and the size
  filter on whole objects;
- :mod:`~volumes.labels.output`: the labels array (zarr v3/v2, N5) with OME-Zarr ``image-label``,
  and the table of objects.

No torch, no Dask: the block tasks in ``workers.segmentation`` call these.
"""
