package e2e

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	be "encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A headless chromium driven through the DevTools protocol, with the standard library
// only: the protocol's JSON messages over a minimal WebSocket client.

// browserPage is one page of a headless chromium, driven through the DevTools protocol.
type browserPage struct {
	t    testing.TB
	ws   *wsConn
	mu   sync.Mutex
	next int64
	wait map[int64]chan cdpReply
	// problems are the console errors, uncaught exceptions and error log entries the
	// page reported.
	problems []string
	done     chan struct{} // closed when the reader stops
}

type cdpReply struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// startPage starts headless chromium (in its own process group, stopped when the test
// ends), connects to its first page and enables the Runtime, Log and Page domains.
func startPage(t testing.TB, width, height int) *browserPage {
	t.Helper()
	bin := chromium(t)
	cmd := exec.Command(bin, "--headless=new", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--no-first-run", "--disable-dev-shm-usage", "--disable-breakpad", "--disable-crash-reporter",
		"--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
		fmt.Sprintf("--window-size=%d,%d", width, height),
		"--user-data-dir="+t.TempDir(), "about:blank")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	exited := make(chan struct{})
	wsURL := make(chan string, 1)
	var log lineBuffer
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(&log, line)
			if u, ok := strings.CutPrefix(line, "DevTools listening on "); ok {
				select {
				case wsURL <- u:
				default:
				}
			}
		}
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
	var browserURL string
	select {
	case browserURL = <-wsURL:
	case <-exited:
		t.Fatalf("chromium exited before listening:\n%s", tail(log.String(), 30))
	case <-time.After(60 * time.Second):
		t.Fatalf("chromium did not print its DevTools URL within 60s:\n%s", tail(log.String(), 30))
	}
	u, err := url.Parse(browserURL)
	if err != nil {
		t.Fatalf("DevTools URL %q: %v", browserURL, err)
	}
	// The page's own WebSocket, from the HTTP endpoint's list of targets.
	var targets []struct{ Type, WebSocketDebuggerURL string }
	ok := waitFor(30*time.Second, 50*time.Millisecond, func() bool {
		resp, err := http.Get("http://" + u.Host + "/json/list")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		targets = nil
		if json.NewDecoder(resp.Body).Decode(&targets) != nil {
			return false
		}
		for _, tg := range targets {
			if tg.Type == "page" {
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("chromium at %s listed no page within 30s: %+v", u.Host, targets)
	}
	var pageURL string
	for _, tg := range targets {
		if tg.Type == "page" {
			pageURL = tg.WebSocketDebuggerURL
			break
		}
	}
	ws, err := dialWebSocket(pageURL)
	if err != nil {
		t.Fatalf("DevTools WebSocket %s: %v", pageURL, err)
	}
	p := &browserPage{t: t, ws: ws, wait: make(map[int64]chan cdpReply), done: make(chan struct{})}
	go p.read()
	t.Cleanup(func() { ws.Close(); <-p.done })
	for _, m := range []string{"Runtime.enable", "Log.enable", "Page.enable"} {
		p.Call(m, nil)
	}
	return p
}

// read dispatches the browser's messages: replies to their callers, events to problems.
func (p *browserPage) read() {
	defer close(p.done)
	for {
		msg, err := p.ws.ReadMessage()
		if err != nil {
			p.mu.Lock()
			for id, ch := range p.wait {
				close(ch)
				delete(p.wait, id)
			}
			p.mu.Unlock()
			return
		}
		var m struct {
			ID     int64           `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
			cdpReply
		}
		if json.Unmarshal(msg, &m) != nil {
			continue
		}
		if m.ID != 0 {
			p.mu.Lock()
			ch := p.wait[m.ID]
			delete(p.wait, m.ID)
			p.mu.Unlock()
			if ch != nil {
				ch <- m.cdpReply
			}
			continue
		}
		if problem := pageProblem(m.Method, m.Params); problem != "" {
			p.mu.Lock()
			p.problems = append(p.problems, problem)
			p.mu.Unlock()
		}
	}
}

// pageProblem describes an event that reports an error in the page, or returns "".
func pageProblem(method string, params json.RawMessage) string {
	switch method {
	case "Runtime.consoleAPICalled":
		var e struct {
			Type string `json:"type"`
			Args []struct {
				Value       any    `json:"value"`
				Description string `json:"description"`
			} `json:"args"`
		}
		if json.Unmarshal(params, &e) != nil || (e.Type != "error" && e.Type != "assert") {
			return ""
		}
		var parts []string
		for _, a := range e.Args {
			parts = append(parts, fmt.Sprint(a.Value, a.Description))
		}
		return "console." + e.Type + ": " + strings.Join(parts, " ")
	case "Runtime.exceptionThrown":
		var e struct {
			ExceptionDetails struct {
				Text      string `json:"text"`
				Exception struct {
					Description string `json:"description"`
				} `json:"exception"`
			} `json:"exceptionDetails"`
		}
		_ = json.Unmarshal(params, &e)
		return "exception: " + e.ExceptionDetails.Text + " " + e.ExceptionDetails.Exception.Description
	case "Log.entryAdded":
		var e struct {
			Entry struct {
				Level, Source, Text, URL string
			} `json:"entry"`
		}
		if json.Unmarshal(params, &e) != nil || e.Entry.Level != "error" {
			return ""
		}
		return "log (" + e.Entry.Source + "): " + e.Entry.Text + " " + e.Entry.URL
	}
	return ""
}

// Problems returns the errors the page reported so far.
func (p *browserPage) Problems() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.problems...)
}

// Call sends one DevTools command and returns its result; an error answer fails the test.
func (p *browserPage) Call(method string, params any) json.RawMessage {
	p.t.Helper()
	p.mu.Lock()
	p.next++
	id := p.next
	ch := make(chan cdpReply, 1)
	p.wait[id] = ch
	p.mu.Unlock()
	msg, err := json.Marshal(map[string]any{"id": id, "method": method, "params": params})
	if err != nil {
		p.t.Fatal(err)
	}
	if err := p.ws.WriteText(msg); err != nil {
		p.t.Fatalf("DevTools %s: %v", method, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			p.t.Fatalf("DevTools %s: the connection closed", method)
		}
		if r.Error != nil {
			p.t.Fatalf("DevTools %s: %d %s", method, r.Error.Code, r.Error.Message)
		}
		return r.Result
	case <-time.After(30 * time.Second):
		p.t.Fatalf("DevTools %s: no answer within 30s", method)
	}
	return nil
}

// Eval evaluates a JavaScript expression in the page (awaiting a promise) and decodes
// its value into out (may be nil); an exception fails the test.
func (p *browserPage) Eval(expr string, out any) {
	p.t.Helper()
	raw := p.Call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true})
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		p.t.Fatalf("Runtime.evaluate %s: %v", expr, err)
	}
	if e := r.ExceptionDetails; e != nil {
		p.t.Fatalf("Runtime.evaluate %s: %s %s", expr, e.Text, e.Exception.Description)
	}
	if out != nil && len(r.Result.Value) > 0 {
		if err := json.Unmarshal(r.Result.Value, out); err != nil {
			p.t.Fatalf("Runtime.evaluate %s: value %s: %v", expr, r.Result.Value, err)
		}
	}
}

// Navigate loads url and waits for its load event.
func (p *browserPage) Navigate(url string) {
	p.t.Helper()
	p.Call("Page.navigate", map[string]any{"url": url})
	if !waitFor(30*time.Second, 20*time.Millisecond, func() bool {
		var state string
		p.Eval("document.readyState", &state)
		return state == "complete"
	}) {
		p.t.Fatalf("%s did not load within 30s", url)
	}
}

// Click clicks the centre of the element selector finds with the mouse, as a person
// would: it fails the test if there is no such element or it is not visible.
func (p *browserPage) Click(selector string) {
	p.t.Helper()
	var box struct {
		Found   bool
		X, Y    float64
		Visible bool
	}
	sel, _ := json.Marshal(selector)
	p.Eval(fmt.Sprintf(`(() => { const e = document.querySelector(%s);
		if (!e) return {Found: false};
		e.scrollIntoView({block: "center"});
		const r = e.getBoundingClientRect();
		return {Found: true, X: r.left + r.width / 2, Y: r.top + r.height / 2, Visible: r.width > 0 && r.height > 0}; })()`, sel), &box)
	if !box.Found || !box.Visible {
		p.t.Fatalf("click %s: no such visible element (found %v)", selector, box.Found)
	}
	for _, typ := range []string{"mouseMoved", "mousePressed", "mouseReleased"} {
		p.Call("Input.dispatchMouseEvent", map[string]any{"type": typ, "x": box.X, "y": box.Y,
			"button": "left", "buttons": 1, "clickCount": 1})
	}
}

// Type clicks the element selector finds and types text into it.
func (p *browserPage) Type(selector, text string) {
	p.t.Helper()
	p.Click(selector)
	p.Call("Input.insertText", map[string]any{"text": text})
}

// Screenshot returns a PNG of the page at the given size.
func (p *browserPage) Screenshot(width, height int) []byte {
	p.t.Helper()
	p.Call("Emulation.setDeviceMetricsOverride", map[string]any{"width": width, "height": height,
		"deviceScaleFactor": 1, "mobile": false})
	raw := p.Call("Page.captureScreenshot", map[string]any{"format": "png"})
	var r struct {
		Data string `json:"data"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		p.t.Fatal(err)
	}
	png, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		p.t.Fatalf("screenshot: %v", err)
	}
	return png
}

// ---------------------------------------------------------------------------------------
// A minimal WebSocket client (RFC 6455): text messages, masked as a client must;
// fragments are joined, pings answered.

type wsConn struct {
	c   net.Conn
	r   *bufio.Reader
	wmu sync.Mutex
}

func dialWebSocket(rawURL string) (*wsConn, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "ws" {
		return nil, fmt.Errorf("not a ws:// URL: %q", rawURL)
	}
	c, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		return nil, err
	}
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", u.RequestURI(), u.Host, key)
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, &http.Request{Method: http.MethodGet})
	if err != nil {
		c.Close()
		return nil, err
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		c.Close()
		return nil, fmt.Errorf("handshake: %s", resp.Status)
	}
	return &wsConn{c: c, r: r}, nil
}

func (w *wsConn) Close() error { return w.c.Close() }

// WriteText sends one masked text frame.
func (w *wsConn) WriteText(p []byte) error { return w.writeFrame(0x1, p) }

func (w *wsConn) writeFrame(op byte, p []byte) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	hdr := []byte{0x80 | op}
	switch n := len(p); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n <= 0xffff:
		hdr = append(hdr, 0x80|126)
		hdr = be.BigEndian.AppendUint16(hdr, uint16(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = be.BigEndian.AppendUint64(hdr, uint64(n))
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	hdr = append(hdr, mask[:]...)
	body := make([]byte, len(p))
	for i := range p {
		body[i] = p[i] ^ mask[i%4]
	}
	_, err := w.c.Write(append(hdr, body...))
	return err
}

// ReadMessage returns the next text or binary message.
func (w *wsConn) ReadMessage() ([]byte, error) {
	var msg []byte
	for {
		var h [2]byte
		if _, err := io.ReadFull(w.r, h[:]); err != nil {
			return nil, err
		}
		fin, op := h[0]&0x80 != 0, h[0]&0x0f
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(w.r, b[:]); err != nil {
				return nil, err
			}
			n = uint64(be.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(w.r, b[:]); err != nil {
				return nil, err
			}
			n = be.BigEndian.Uint64(b[:])
		}
		if n > 256<<20 {
			return nil, fmt.Errorf("websocket frame of %d bytes", n)
		}
		var mask []byte
		if h[1]&0x80 != 0 { // a server does not mask, but tolerate it
			mask = make([]byte, 4)
			if _, err := io.ReadFull(w.r, mask); err != nil {
				return nil, err
			}
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(w.r, p); err != nil {
			return nil, err
		}
		if mask != nil {
			for i := range p {
				p[i] ^= mask[i%4]
			}
		}
		switch op {
		case 0x8:
			return nil, errors.New("websocket closed by the browser")
		case 0x9:
			if err := w.writeFrame(0xA, p); err != nil {
				return nil, err
			}
			continue
		case 0xA:
			continue
		}
		msg = append(msg, p...)
		if fin {
			return msg, nil
		}
	}
}
