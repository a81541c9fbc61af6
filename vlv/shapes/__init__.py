"""The shapes world: the offline miniature in which the whole VLV method runs on a laptop CPU (MISSION.md §6)."""
