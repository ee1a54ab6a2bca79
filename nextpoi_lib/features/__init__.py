"""Features: what the models see of a window, each computed only when a run asks for it.

* `sequence`: the neural heads' numeric per-visit inputs (time, coordinates, and `user_past`: the history and
  personal-transition columns below, repeated at every position);
* `identity`: the per-fold vocabularies of the trainable POI-identity and venue-type tables (from the fold's
  training windows only; anything else maps to the shared "unseen" row);
* `tabular`: the trees' window features (categories by position, counts, hours, gaps, last place);
* `history`: the user's category counts before the window;
* `personal`: what the user did after their own earlier visits to the window's last category and POI;
* `target_statistics`: next-category statistics keyed by the last POI or venue type, fitted on training users;
* `place_statistics`: those statistics as a per-fold input of the neural heads (`windows.features`).

Everything here reads only the observed visits of a window and check-ins before its target.
"""
