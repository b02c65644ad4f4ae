<?php
/**
 * A real php-fpm master in the foreground with one static pool of ONE worker (so consecutive
 * requests meet the same worker process), listening on a unix socket in a temporary directory,
 * with the extension loaded. Requests go through `cgi-fcgi -bind -connect SOCKET`, as a web
 * server would send them.
 */

declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

final class FpmPool
{
    private string $dir;
    /** @var resource */
    private $process;

    /** Why a php-fpm pool cannot run here, or null when it can. */
    public static function unavailable(): ?string
    {
        if (self::fpmBinary() === null) {
            return 'php-fpm is not installed (apt-get install php8.2-fpm)';
        }
        if (self::which('cgi-fcgi') === null) {
            return 'cgi-fcgi is not installed (apt-get install libfcgi-bin)';
        }
        return null;
    }

    /** @param array<string, string> $ini php_admin_value settings of the pool */
    public function __construct(array $ini = [])
    {
        $this->dir = sys_get_temp_dir() . '/mac-fpm-' . bin2hex(random_bytes(4));
        mkdir($this->dir, 0700);
        $root = posix_geteuid() === 0;
        $lines = [
            '[global]',
            "pid = {$this->dir}/fpm.pid",
            "error_log = {$this->dir}/fpm.log",
            'daemonize = no',
            '[pool]',
            "listen = {$this->dir}/fpm.sock",
            'pm = static',
            'pm.max_children = 1',
            'catch_workers_output = yes',
            'clear_env = no',
            "php_admin_value[error_log] = {$this->dir}/php-errors.log",
            'php_admin_flag[log_errors] = on',
            'php_admin_flag[display_errors] = on',
            // Unbuffered: what a request printed before it died reaches the client.
            'php_admin_value[output_buffering] = 0',
        ];
        if ($root) {
            $lines[] = 'user = root';
            $lines[] = 'group = root';
        }
        foreach ($ini as $k => $v) {
            $lines[] = "php_admin_value[$k] = $v";
        }
        file_put_contents("{$this->dir}/fpm.conf", implode("\n", $lines) . "\n");
        $cmd = [self::fpmBinary(), '-F', '-y', "{$this->dir}/fpm.conf",
            '-d', 'extension=' . TestDatabase::extensionPath()];
        if ($root) {
            $cmd[] = '-R';
        }
        $this->process = proc_open($cmd, [0 => ['file', '/dev/null', 'r'],
            1 => ['file', "{$this->dir}/fpm.out", 'a'], 2 => ['file', "{$this->dir}/fpm.out", 'a']], $pipes);
        for ($i = 0; $i < 200 && !file_exists("{$this->dir}/fpm.sock"); $i++) {
            usleep(25000);
        }
        if (!file_exists("{$this->dir}/fpm.sock")) {
            $log = @file_get_contents("{$this->dir}/fpm.out") . @file_get_contents("{$this->dir}/fpm.log");
            $this->stop();
            throw new \RuntimeException("php-fpm did not start:\n$log");
        }
    }

    public function dir(): string
    {
        return $this->dir;
    }

    /** Writes a script into the pool's directory; returns its path. */
    public function script(string $name, string $php): string
    {
        $path = "{$this->dir}/$name";
        file_put_contents($path, $php);
        return $path;
    }

    /**
     * One request through FastCGI; returns the response body (headers stripped).
     *
     * @param array<string, string> $query
     */
    public function request(string $script, array $query = []): string
    {
        $env = [
            'SCRIPT_FILENAME' => $script,
            'SCRIPT_NAME' => '/' . basename($script),
            'REQUEST_URI' => '/' . basename($script),
            'DOCUMENT_ROOT' => $this->dir,
            'REQUEST_METHOD' => 'GET',
            'QUERY_STRING' => http_build_query($query),
            'SERVER_PROTOCOL' => 'HTTP/1.1',
            'GATEWAY_INTERFACE' => 'CGI/1.1',
            'PATH' => getenv('PATH') ?: '/usr/bin:/bin',
        ];
        $proc = proc_open([self::which('cgi-fcgi'), '-bind', '-connect', "{$this->dir}/fpm.sock"],
            [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, $this->dir, $env);
        $out = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        fclose($pipes[1]);
        fclose($pipes[2]);
        proc_close($proc);
        $parts = preg_split("/\r?\n\r?\n/", (string) $out, 2);
        return ($parts[1] ?? $parts[0] ?? '') . $err;
    }

    /** The pids of the pool's workers right now (children of the master). */
    public function workers(): array
    {
        $master = proc_get_status($this->process)['pid'];
        $children = @file_get_contents("/proc/$master/task/$master/children");
        return array_map('intval', preg_split('/\s+/', trim((string) $children), -1, PREG_SPLIT_NO_EMPTY));
    }

    /** What PHP logged (error_log of the pool). */
    public function phpLog(): string
    {
        return (string) @file_get_contents("{$this->dir}/php-errors.log");
    }

    public function stop(): void
    {
        if (is_resource($this->process)) {
            $status = proc_get_status($this->process);
            if ($status['running']) {
                // SIGQUIT: graceful; then make sure.
                posix_kill($status['pid'], SIGQUIT);
                for ($i = 0; $i < 100 && proc_get_status($this->process)['running']; $i++) {
                    usleep(20000);
                }
                if (proc_get_status($this->process)['running']) {
                    posix_kill($status['pid'], SIGKILL);
                }
            }
            proc_close($this->process);
        }
        foreach (glob("{$this->dir}/*") ?: [] as $f) {
            @unlink($f);
        }
        @rmdir($this->dir);
    }

    private static function fpmBinary(): ?string
    {
        foreach (['php-fpm' . PHP_MAJOR_VERSION . '.' . PHP_MINOR_VERSION, 'php-fpm'] as $name) {
            $path = self::which($name);
            if ($path !== null) {
                return $path;
            }
        }
        return null;
    }

    private static function which(string $name): ?string
    {
        foreach (array_merge(explode(':', getenv('PATH') ?: ''), ['/usr/sbin', '/usr/local/sbin', '/sbin']) as $d) {
            if ($d !== '' && is_executable("$d/$name")) {
                return "$d/$name";
            }
        }
        return null;
    }
}
