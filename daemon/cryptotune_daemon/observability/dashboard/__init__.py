"""The read-only web dashboard: pages, their JSON and the live event stream (Server-Sent Events)."""
