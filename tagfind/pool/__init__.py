"""Pool counters: live (Windows), poolmon logs and !poolused text, saved snapshots."""
