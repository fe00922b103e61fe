"""Parts of the bad-input catalogue by topic (see ``tests/bad_input_catalogue.py``)."""
