// Command mendmq is the mendmq broker and its operator tools:
//
//	mendmq serve [--config FILE] [--set key=value ...]   run a node
//	mendmq version                                      print the version
//	mendmq passwd                                       bcrypt a password for auth.users
//	mendmq policy ...                                   merge-policy tools
//	mendmq ctl ...                                      talk to a running node's admin API
package main

import (
	"fmt"
	"os"
	"sort"
)

type command struct {
	summary string
	run     func(args []string) int
}

var commands = map[string]command{}

// register adds a subcommand; each lives in its own file and registers
// itself from init.
func register(name, summary string, run func(args []string) int) {
	if _, dup := commands[name]; dup {
		panic("mendmq: command registered twice: " + name)
	}
	commands[name] = command{summary: summary, run: run}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: mendmq <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-9s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(os.Stderr, "\n'mendmq <command> -h' shows a command's flags.")
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		usage()
		return
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "mendmq: unknown command %q\n\n", name)
		usage()
		os.Exit(2)
	}
	os.Exit(cmd.run(os.Args[2:]))
}
