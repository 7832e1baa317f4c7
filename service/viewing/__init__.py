"""What a job shows a person: its layers (layers.py), a neuroglancer view of them (neuroglancer.py,
views.py) and slice previews (previews.py). Served by service.http.viewer and service.http.stores."""
