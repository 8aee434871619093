// The testbed's network probe: one static binary for pods on the real node that checks whether one
// pod can reach another (NetworkPolicy tests). The image holds nothing else, so both sides of a
// check are this program:
//
//	probe serve ADDR           answer HTTP 200 "ok" on / at ADDR (e.g. ":8080"), until stopped
//	probe get URL [TIMEOUT]    GET URL until HTTP 200 (exit 0) or TIMEOUT (print the last error, exit 1)
//
// TIMEOUT is a Go duration ("3s", "500ms") or a number of seconds; it defaults to 5s. A policy that
// drops packets shows as a timeout, one that rejects them as "connection refused".
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: probe serve ADDR | probe get URL [TIMEOUT]")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 3 {
		usage()
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2])
	case "get":
		timeout := 5 * time.Second
		if len(os.Args) > 3 {
			parsed, err := parseTimeout(os.Args[3])
			if err != nil {
				fmt.Fprintf(os.Stderr, "probe: bad timeout %q: %v\n", os.Args[3], err)
				os.Exit(2)
			}
			timeout = parsed
		}
		if err := get(os.Args[2], timeout); err != nil {
			fmt.Println("probe:", err)
			os.Exit(1)
		}
		fmt.Println("ok")
	default:
		usage()
	}
}

func parseTimeout(text string) (time.Duration, error) {
	if seconds, err := strconv.ParseFloat(text, 64); err == nil {
		return time.Duration(seconds * float64(time.Second)), nil
	}
	return time.ParseDuration(text)
}

func serve(addr string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok\n")
	})
	server := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	// As PID 1 in its container the program gets no default signal handling: stop on SIGTERM.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		os.Exit(0)
	}()
	fmt.Println("probe: serving on", addr)
	if err := server.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

// get asks until an answer of 200 or the timeout, whichever comes first, and returns the last
// error. A pod's first packets can precede the network policy rules that admit it (kube-router
// adds a new pod's address to its sets when it sees the pod's IP), so one refused attempt says
// nothing; refusals for the whole timeout do.
func get(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left < 100*time.Millisecond {
			left = 100 * time.Millisecond
		}
		err := getOnce(url, left)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func getOnce(url string, timeout time.Duration) error {
	client := &http.Client{Timeout: timeout}
	response, err := client.Get(url)
	if err != nil {
		return err
	}
	defer response.Body.Close()
	_, _ = io.Copy(io.Discard, response.Body)
	if response.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", url, response.Status)
	}
	return nil
}
