#!/usr/bin/env python3
"""Joins N tickets to room `poll` of the gateway on PORT and writes a wrk script that polls
them in turn, each request with its own ticket's cookie (a crowd polling, not one client
polling one ticket). The requested path is $POLL_PREFIX followed by the ticket id, so the
same script can ask a static file server for a file of the same size.

    poll_script.py PORT N OUT.lua
"""
import http.client
import json
import sys

port, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port)
rows = []
for _ in range(n):
    c.request("POST", "/api/v1/rooms/poll/tickets")
    r = c.getresponse()
    rows.append((json.loads(r.read())["ticket"], r.getheader("set-cookie").split(";")[0]))
with open(out, "w") as f:
    f.write("tickets = {\n" + "".join(f'  {{"{t}", "{c}"}},\n' for t, c in rows) + "}\n")
    f.write("""prefix = os.getenv("POLL_PREFIX")
local i = 0
init = function(args) i = math.random(#tickets) end
request = function()
  i = i % #tickets + 1
  return wrk.format("GET", prefix .. tickets[i][1], { Cookie = tickets[i][2] })
end
""")
