module pitstop.dev/apicheck

go 1.25.0
