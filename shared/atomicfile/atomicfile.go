// Package atomicfile replaces and claims files so that a crash or power loss
// at any moment leaves either the old state or the new one, never a mix.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// WriteFile writes data to path atomically: it writes a temporary file in the
// same directory, fsyncs it, renames it over path and fsyncs the directory.
// The file gets mode perm exactly (the umask does not apply). If path is a
// symbolic link, the link itself is replaced by a regular file.
//
// On success path holds data, durably. On error path is unchanged (the old
// content, or still absent) and the temporary file has been removed; the
// error names the step and the path. If only the final directory fsync
// fails, the rename has happened but may not survive a power loss.
func WriteFile(path string, data []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, tempPattern(base))
	if err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("atomicfile: write %s: fsync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("atomicfile: write %s: close: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", path, err)
	}
	return nil
}

// tempPattern names WriteFile's temporary files for a base name.
func tempPattern(base string) string { return "." + base + ".tmp-*" }

// CleanTemp removes the temporary files that WriteFile(path, ...) calls left
// behind when the process was killed mid-write, and returns their paths. Call
// it at start-up, when no WriteFile of path is running (it would remove that
// call's temporary file and make it fail). The error is that of listing the
// directory, or the first failed removal (the other leftovers are still
// removed).
func CleanTemp(path string) ([]string, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("atomicfile: clean temporaries of %s: %w", path, err)
	}
	prefix := strings.TrimSuffix(tempPattern(base), "*")
	var matches []string
	for _, e := range ents {
		// os.CreateTemp puts decimal digits in place of the '*'.
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if ok && rest != "" && strings.Trim(rest, "0123456789") == "" && e.Type().IsRegular() {
			matches = append(matches, filepath.Join(dir, e.Name()))
		}
	}
	var removed []string
	var first error
	for _, m := range matches {
		if err := os.Remove(m); err != nil {
			if !errors.Is(err, fs.ErrNotExist) && first == nil {
				first = fmt.Errorf("atomicfile: clean temporaries of %s: %w", path, err)
			}
			continue
		}
		removed = append(removed, m)
	}
	return removed, first
}

// Claim moves src to dst with one rename, so that of several processes
// claiming the same src exactly one succeeds, and then fsyncs the
// directories involved. An existing dst is replaced. Both must be on the same
// file system.
//
// Outcomes: nil when dst now holds what src was; an error satisfying
// errors.Is(err, fs.ErrNotExist) when src is gone (someone else claimed it,
// or it never existed); another error otherwise (src is then unchanged,
// unless only the final directory fsync failed).
func Claim(src, dst string) error {
	if err := os.Rename(src, dst); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if _, serr := os.Lstat(src); errors.Is(serr, fs.ErrNotExist) {
				return fmt.Errorf("atomicfile: claim %s: already gone: %w", src, fs.ErrNotExist)
			}
			// src exists: it is dst's directory that is missing. Do not
			// report that as fs.ErrNotExist, which means "src is gone".
			return fmt.Errorf("atomicfile: claim %s as %s: destination directory missing: %v", src, dst, err)
		}
		return fmt.Errorf("atomicfile: claim %s: %w", src, err)
	}
	dstDir, srcDir := filepath.Dir(dst), filepath.Dir(src)
	if err := syncDir(dstDir); err != nil {
		return fmt.Errorf("atomicfile: claim %s: %w", src, err)
	}
	if srcDir != dstDir {
		if err := syncDir(srcDir); err != nil {
			return fmt.Errorf("atomicfile: claim %s: %w", src, err)
		}
	}
	return nil
}

// syncDir fsyncs a directory so that renames and creations in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
