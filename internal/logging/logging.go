// Package logging builds precache's one *zap.Logger and routes the libraries' loggers
// (containerd's logrus, client-go's klog) into it, so a JSON log stays one JSON stream.
package logging

import (
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/go-logr/zapr"
	"github.com/sirupsen/logrus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/klog/v2"
)

var routeOnce sync.Once

// Format is the log encoding.
type Format string

const (
	FormatAuto    Format = ""        // console on a terminal, JSON otherwise
	FormatConsole Format = "console" // human-readable
	FormatJSON    Format = "json"    // one JSON object a line
)

// New returns a logger writing to w (normally stderr). Verbosity 0 logs info and above,
// 1 adds debug, 2 adds the libraries' debug output too.
func New(w io.Writer, format Format, verbosity int) (*zap.Logger, error) {
	switch format {
	case FormatAuto:
		format = FormatJSON
		if IsTerminal(w) {
			format = FormatConsole
		}
	case FormatConsole, FormatJSON:
	default:
		return nil, fmt.Errorf("invalid --log-format %q: use console or json", format)
	}
	level := zapcore.InfoLevel
	if verbosity >= 1 {
		level = zapcore.DebugLevel
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	encCfg.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	if format == FormatConsole {
		encCfg.EncodeLevel = zapcore.CapitalColorLevelEncoder
		encCfg.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
		if !IsTerminal(w) {
			encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		}
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	log := zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), level))
	// The libraries' loggers are process-global: route them once, to the first logger
	// built (a process builds one; tests running commands in parallel build many).
	routeOnce.Do(func() {
		routeLogrus(log, verbosity)
		// client-go logs through klog: into the same stream, its chatter only with -vv.
		klogLog := log.Named("client-go")
		if verbosity < 2 {
			klogLog = klogLog.WithOptions(zap.IncreaseLevel(zapcore.WarnLevel))
		}
		klog.SetLogger(zapr.NewLogger(klogLog))
	})
	return log, nil
}

// IsTerminal reports whether w is a terminal (for console logs and progress displays).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// routeLogrus sends containerd's client-side logs (logrus, through containerd/log) to log.
// Below verbosity 2 only its warnings and errors come through.
func routeLogrus(log *zap.Logger, verbosity int) {
	logrus.SetOutput(io.Discard)
	logrus.SetLevel(logrus.WarnLevel)
	if verbosity >= 2 {
		logrus.SetLevel(logrus.DebugLevel)
	}
	logrus.StandardLogger().ReplaceHooks(logrus.LevelHooks{})
	logrus.AddHook(&zapHook{log: log.Named("containerd")})
}

type zapHook struct{ log *zap.Logger }

func (h *zapHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *zapHook) Fire(e *logrus.Entry) error {
	fields := make([]zap.Field, 0, len(e.Data))
	for k, v := range e.Data {
		fields = append(fields, zap.Any(k, v))
	}
	switch e.Level {
	case logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel:
		h.log.Error(e.Message, fields...)
	case logrus.WarnLevel:
		h.log.Warn(e.Message, fields...)
	case logrus.InfoLevel:
		h.log.Info(e.Message, fields...)
	default:
		h.log.Debug(e.Message, fields...)
	}
	return nil
}
