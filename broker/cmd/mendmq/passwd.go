package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

func init() {
	register("passwd", "read a password on stdin, print its bcrypt hash for auth.users", runPasswd)
}

func runPasswd(args []string) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost (4-31); each +1 doubles the CPU per check")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil && line == "" {
		fmt.Fprintln(os.Stderr, "mendmq passwd: read password from stdin:", err)
		return 1
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		fmt.Fprintln(os.Stderr, "mendmq passwd: empty password")
		return 1
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), *cost)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mendmq passwd:", err)
		return 1
	}
	fmt.Println(string(h))
	return 0
}
